"""Which runner a model file gets (rfdeploy.runtime.backends)."""

from __future__ import annotations

from pathlib import Path

import sys

import pytest

from rfdeploy.core.errors import ModelFileError
from rfdeploy.runtime.backends.base import model_kind
from rfdeploy.runtime.backends.selection import open_runner


def test_model_kinds_by_suffix():
    assert [model_kind(Path(n)) for n in ("d.onnx", "d.ENGINE", "d.plan", "d.safetensors", "d.pt")] == [
        "onnx", "engine", "engine", "checkpoint", "checkpoint"]


def test_a_file_of_unknown_kind_is_a_model_file_error(tmp_path):
    # a model file of the wrong kind (exit 3), as for every other unusable model file
    with pytest.raises(ModelFileError, match="unknown model file type '.txt'") as e:
        model_kind(tmp_path / "faces.txt")
    assert e.value.exit_code == 3 and ".onnx" in e.value.hint
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError, match="unknown model file type"):
        open_runner(weights)


def test_gpu_providers_carry_the_requested_device_index():
    # onnxruntime's GPU providers run on GPU 0 unless given a device_id: cuda:1 must reach them
    from rfdeploy.core.errors import BackendUnavailableError, InputError
    from rfdeploy.runtime.backends.ort_runner import pick_providers

    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    # not the TensorRT EP: it would rebuild an engine at every start and for every new shape
    assert pick_providers("cuda:1", avail) == [("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0}),
                                              "CPUExecutionProvider"]
    assert pick_providers("cuda", avail[1:])[0] == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})
    with pytest.raises(BackendUnavailableError):
        pick_providers("cuda:0", ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert pick_providers("cpu", avail) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError):
        pick_providers("cuda:0", ["CPUExecutionProvider"])
    with pytest.raises(InputError):
        pick_providers("cuda:x", avail)


def test_engine_check_asks_about_the_requested_gpu(monkeypatch):
    from rfdeploy.engines import engine_cache

    asked = []
    monkeypatch.setattr(engine_cache, "cuda_driver_loads", lambda: True)
    monkeypatch.setattr(engine_cache.BuilderBackend, "load", classmethod(lambda cls, prefer=None: object()))
    monkeypatch.setattr(engine_cache, "current_gpu", lambda index=0: asked.append(index))
    assert engine_cache.engines_usable_here(device_index=2) == "no CUDA GPU 2 is visible"
    assert asked == [2]


def _fake_cudart(monkeypatch, devices: dict[int, tuple[str, int, int]], calls: list):
    """cuda.bindings.runtime with ``devices`` {index: (name, major, minor)}; records SetDevice."""
    import types

    rt = types.ModuleType("cuda.bindings.runtime")
    state = {"current": 0}

    def props(index):
        if index not in devices:
            return 101, None  # cudaErrorInvalidDevice
        name, major, minor = devices[index]
        return 0, types.SimpleNamespace(name=name.encode() + b"\0", major=major, minor=minor)

    def set_device(index):
        calls.append(index)
        state["current"] = index
        return (0,)

    rt.cudaGetDeviceProperties = props
    rt.cudaSetDevice = set_device
    rt.cudaGetDevice = lambda: (0, state["current"])
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    return state


def test_a_gpu_torch_cannot_see_is_found_through_the_cuda_runtime(monkeypatch):
    """torch without CUDA (a CPU wheel on a GPU server) must not hide the GPU from TensorRT,
    which runs engines through the CUDA runtime: current_gpu asks it, and --backend auto can
    pick engines."""
    import torch

    from rfdeploy.engines import backend, engine_cache

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here: the fallback is not what answers")
    monkeypatch.setattr(backend, "cuda_driver_loads", lambda: True)
    _fake_cudart(monkeypatch, {0: ("Fake L4", 8, 9)}, [])
    assert backend.current_gpu(0) == {"name": "Fake L4", "compute_capability": "8.9"}
    assert backend.current_gpu(1) is None
    monkeypatch.setattr(engine_cache, "cuda_driver_loads", lambda: True)
    monkeypatch.setattr(engine_cache, "current_gpu", backend.current_gpu)
    members = {"SM89": None, "SM86": None}
    fake = type("B", (), {"supports_compute_capability_targets": True,
                          "module": type("M", (), {"ComputeCapability": type("C", (), {"__members__": members})})})
    monkeypatch.setattr(engine_cache.BuilderBackend, "load", classmethod(lambda cls, prefer=None: fake))
    assert engine_cache.engines_usable_here() is None
    assert engine_cache.engines_usable_here(device_index=1) == "no CUDA GPU 1 is visible"


def test_a_build_runs_on_the_requested_gpu_and_restores_the_current_one(monkeypatch):
    """Data-centre TensorRT builds on the thread's current device: the build of an engine for
    cuda:1 must make GPU 1 current and give GPU 0 back afterwards."""
    import torch

    from rfdeploy.engines import build

    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here: the build device is chosen through torch")
    calls: list = []
    state = _fake_cudart(monkeypatch, {0: ("A", 8, 0), 1: ("B", 8, 9)}, calls)
    with build._on_device(1):
        assert state["current"] == 1
    assert calls == [1, 0] and state["current"] == 0
    # an error inside the build reaches the caller as it is, and the device is still restored
    with pytest.raises(ImportError, match="inside"):
        with build._on_device(1):
            raise ImportError("inside the build")
    assert state["current"] == 0


def test_ensure_engine_builds_for_the_requested_gpu(monkeypatch, tmp_path):
    """The engine cache asks about GPU ``device_index`` and hands it to the build."""
    from rfdeploy.core.errors import BuildError
    from rfdeploy.engines import engine_cache
    from rfdeploy.models import DEFAULT_RANKER_ONNX

    asked, built = [], []
    monkeypatch.setattr(engine_cache, "current_gpu",
                        lambda index=0: asked.append(index) or {"name": "B", "compute_capability": "8.9"})
    fake = type("B", (), {"name": "tensorrt", "version": "10.0"})
    monkeypatch.setattr(engine_cache.BuilderBackend, "load", classmethod(lambda cls, prefer=None: fake))

    def fake_build(*args, **kw):
        built.append(kw)
        raise BuildError("stop here")

    monkeypatch.setattr(engine_cache, "build_engine", fake_build)
    with pytest.raises(BuildError, match="stop here"):
        engine_cache.ensure_engine(DEFAULT_RANKER_ONNX, tmp_path, device_index=1, echo=lambda msg: None)
    assert asked == [1]
    assert built[0]["device_index"] == 1 and built[0]["compute_capabilities"] == ["8.9"]


def test_the_rankers_onnxruntime_threads_do_not_spin():
    """Two onnxruntime sessions in one pipeline: the ranker's worker threads must sleep after its
    call, or they take the cores from the detector's next call (its time doubled at VGA)."""
    from rfdeploy.runtime.pipeline import FacePipeline

    def spins(session) -> bool:
        try:
            return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # not set: onnxruntime's default, spinning
            return True

    pipe = FacePipeline.create(use_ranker=True)
    det, rank = pipe.detector.runner, pipe.ranker.runner
    assert det.spin and not rank.spin
    assert not spins(rank.session) and spins(det.session)
    # a shape-specialised session keeps the setting
    import numpy as np

    x = np.zeros((1, 3, 32, 32), np.float32)
    boxes = np.zeros((1, pipe.ranker.num_boxes, 5), np.float32)
    for _ in range(3):
        rank.infer({"image": x, "boxes": boxes})
    assert rank._fixed and not any(spins(s) for s in rank._fixed.values())
