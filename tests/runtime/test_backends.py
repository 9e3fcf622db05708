"""Which runner a model file gets (rfdeploy.runtime.backends)."""

from __future__ import annotations

from pathlib import Path

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
    assert pick_providers("cuda:1", avail) == [("TensorrtExecutionProvider", {"device_id": 1}),
                                                ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert pick_providers("cuda", avail[1:])[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert pick_providers("cpu", avail) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError):
        pick_providers("cuda:0", ["CPUExecutionProvider"])
    with pytest.raises(InputError):
        pick_providers("cuda:x", avail)


def test_engine_check_asks_about_the_requested_gpu(monkeypatch):
    from rfdeploy.engines import engine_cache

    asked = []
    monkeypatch.setattr(engine_cache, "cuda_available", lambda: True)
    monkeypatch.setattr(engine_cache.BuilderBackend, "load", classmethod(lambda cls, prefer=None: object()))
    monkeypatch.setattr(engine_cache, "current_gpu", lambda index=0: asked.append(index))
    assert engine_cache.engines_usable_here(device_index=2) == "no CUDA GPU 2 is visible"
    assert asked == [2]
