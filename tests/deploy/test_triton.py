"""Triton repository: configs parse with Triton's own schema and match the engine manifests; the
Python model's code runs against a stand-in ``triton_python_backend_utils`` whose BLS calls run
the same networks (the ONNX files the engines were built from) with onnxruntime. This checks the
repository's files and the model's own logic; a real server runs in test_triton_server.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.engines.manifest import load_manifest
from tests.deploy.conftest import TINY_K, TINY_N

ASTRONAUT = Path(__file__).resolve().parents[2] / "rfdeploy" / "assets" / "astronaut.jpg"


def _model_config_pb2():
    """Triton's ModelConfig schema as shipped in tritonclient (loaded from its file, because
    ``tritonclient.grpc/__init__`` insists on the grpc extra, which the schema does not need)."""
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):
        pass
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install tritonclient): Triton's config schema is unavailable")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    s = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def _parse(path: Path):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


@pytest.fixture(scope="module")
def repo(tiny_engines, tmp_path_factory):
    from rfdeploy.deploy.triton import write_triton_repo

    out = tmp_path_factory.mktemp("triton") / "repo"
    return write_triton_repo(out, tiny_engines["detector"], tiny_engines["ranker"], max_batch=16, instances=2,
                             python_instances=3, gpus=[0], tile="128", score_thr=0.0, candidate_thr=0.0)


def test_every_config_parses_and_matches_the_manifests(repo, tiny_engines):
    assert sorted(p.name for p in repo.path.iterdir()) == ["rfdeploy_detector", "rfdeploy_faces", "rfdeploy_ranker"]
    assert sorted(repo.models) == ["rfdeploy_detector", "rfdeploy_faces", "rfdeploy_ranker"]
    for kind in ("detector", "ranker"):
        cfg, pb2 = _parse(repo.models[f"rfdeploy_{kind}"])
        m = load_manifest(tiny_engines[kind])
        assert cfg.name == f"rfdeploy_{kind}" and cfg.platform == "tensorrt_plan"
        # profile 0 allows batch 4 (detector) / 2 (ranker): the requested 16 is capped to it
        assert cfg.max_batch_size == {"detector": 4, "ranker": 2}[kind]
        got_in = [(t.name, pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in cfg.input]
        got_out = [(t.name, pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in cfg.output]
        assert got_in == [(t.name, "TYPE_FP32", tuple(t.shape[1:])) for t in m.inputs]
        assert got_out == [(t.name, "TYPE_FP32", tuple(t.shape[1:])) for t in m.outputs]
        assert cfg.HasField("dynamic_batching")
        # instances run on the profile the runtime feeds (the plans have one: profile 0)
        assert [(g.kind, g.count, list(g.gpus), list(g.profile)) for g in cfg.instance_group] == [
            (pb2.ModelInstanceGroup.KIND_GPU, 2, [0], ["0"])]
        plan = repo.path / f"rfdeploy_{kind}" / "1" / "model.plan"
        assert plan.read_bytes() == tiny_engines[kind].read_bytes()
        assert load_manifest(plan) == m  # the manifest travels beside the plan
    det_cfg, _ = _parse(repo.models["rfdeploy_detector"])
    assert [tuple(t.dims) for t in det_cfg.output] == [(TINY_K, 4), (TINY_K,)]
    rank_cfg, _ = _parse(repo.models["rfdeploy_ranker"])
    assert tuple(rank_cfg.input[1].dims) == (TINY_N, 5)

    faces, pb2 = _parse(repo.models["rfdeploy_faces"])
    assert faces.backend == "python" and faces.max_batch_size == 0
    assert [(t.name, pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in faces.input] == [("IMAGE", "TYPE_UINT8", (-1,))]
    assert [t.name for t in faces.output] == ["BOXES", "SCORES", "DETECTOR_SCORES", "IMAGE_SIZE"]
    assert [(g.kind, g.count) for g in faces.instance_group] == [(pb2.ModelInstanceGroup.KIND_CPU, 3)]
    settings = json.loads((repo.path / "rfdeploy_faces" / "1" / "faces.json").read_text())
    assert settings["facelogic"]["max_batch"] == 4 and settings["facelogic"]["max_input_size"] == [256, 256]
    assert settings["facelogic"]["ranker_boxes"] == TINY_N
    assert settings["ranker"]["boxes"] == "boxes"
    # No temporary folders left beside the repository.
    assert [p.name for p in repo.path.parent.iterdir()] == ["repo"]


def test_bad_inputs_are_refused_and_leave_nothing(tiny_engines, tmp_path):
    from rfdeploy.deploy.triton import write_triton_repo

    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="already exists"):
        write_triton_repo(tmp_path / "exists", tiny_engines["detector"])
    with pytest.raises(ModelFileError, match="not found"):
        write_triton_repo(tmp_path / "r1", tmp_path / "missing.engine")
    # The ranker engine has two inputs: not a detector.
    with pytest.raises(ModelFileError, match="one 4-D image input"):
        write_triton_repo(tmp_path / "r2", tiny_engines["ranker"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    # overwrite replaces atomically
    r = write_triton_repo(tmp_path / "exists", tiny_engines["detector"], overwrite=True)
    assert sorted(r.models) == ["rfdeploy_detector", "rfdeploy_faces"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_pbtxt_string_escapes_round_trip():
    from google.protobuf import text_format

    from rfdeploy.deploy.triton import pbtxt_string

    pb2 = _model_config_pb2()
    name = 'we"ird\\näme\n'
    cfg = text_format.Parse(f"name: {pbtxt_string(name)}", pb2.ModelConfig())
    assert cfg.name == name


# --- the Python model against a stand-in triton_python_backend_utils -------------------------------


def _fake_pb_utils(handlers: dict, log: list, gpu_outputs: bool = True):
    """The names model.py uses, with BLS exec() dispatched to ``handlers[model_name](inputs)``.

    ``gpu_outputs``: as Triton does for a network model on a GPU (a TensorRT plan), a BLS
    response's tensors stay in GPU memory, where ``as_numpy()`` fails, unless the request asked
    for CPU memory with ``preferred_memory``."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_MEMORY_GPU, pb.TRITONSERVER_MEMORY_CPU = "gpu", "cpu"

    class PreferredMemory:
        def __init__(self, preferred_memory_type, preferred_device_id=0):
            self.type, self.device = preferred_memory_type, preferred_device_id

    class Tensor:
        def __init__(self, name, array, on_gpu=False):
            self._name, self._array, self._on_gpu = name, np.asarray(array), on_gpu

        def name(self):
            return self._name

        def is_cpu(self):
            return not self._on_gpu

        def as_numpy(self):
            if self._on_gpu:
                raise RuntimeError("Tensor is stored in GPU and cannot be converted to NumPy.")
            return self._array

    class TritonError:
        def __init__(self, msg):
            self._msg = msg

        def message(self):
            return self._msg

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self._error = output_tensors, error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None):
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs
            self.preferred_memory = preferred_memory

        def exec(self):
            feeds = {t.name(): t.as_numpy() for t in self.inputs}
            log.append((self.model_name, {k: (v.shape, v.dtype) for k, v in feeds.items()}))
            try:
                values = handlers[self.model_name](feeds)
            except Exception as e:  # what Triton returns for a failed inner request
                return InferenceResponse([], TritonError(str(e)))
            on_gpu = gpu_outputs and getattr(self.preferred_memory, "type", None) != pb.TRITONSERVER_MEMORY_CPU
            return InferenceResponse([Tensor(n, values[n], on_gpu) for n in self.outputs])

    def get_tensor(obj, name):
        tensors = obj.output_tensors if isinstance(obj, InferenceResponse) else obj.inputs
        return next((t for t in tensors if t.name() == name), None)

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = Tensor, TritonError, InferenceResponse, InferenceRequest
    pb.PreferredMemory = PreferredMemory
    pb.get_input_tensor_by_name = pb.get_output_tensor_by_name = get_tensor
    return pb


def _ort(path):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [o.name for o in s.get_outputs()]
    return lambda feeds: dict(zip(outs, s.run(outs, feeds)))


@pytest.fixture
def faces_model(repo, tiny_onnx, monkeypatch):
    det, rank = _ort(tiny_onnx["detector"]), _ort(tiny_onnx["ranker"])
    log: list = []
    pb = _fake_pb_utils({"rfdeploy_detector": det, "rfdeploy_ranker": rank}, log)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    model_dir = repo.path / "rfdeploy_faces"
    # Triton puts the model's version folder on sys.path (model.py imports rfdeploy_env from there)
    monkeypatch.syspath_prepend(str(model_dir / "1"))
    monkeypatch.delitem(sys.modules, "rfdeploy_env", raising=False)
    spec = importlib.util.spec_from_file_location("rfdeploy_faces_model", model_dir / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize({"model_repository": str(model_dir), "model_version": "1", "model_config": "{}"})
    return model, pb, log, det, rank


def test_python_model_tiles_batches_and_ranks_like_the_runtime(faces_model):
    from rfdeploy.core.image_io import load_image
    from rfdeploy.runtime.facelogic import FaceLogicConfig, detect_faces

    model, pb, log, det, rank = faces_model
    data = np.frombuffer(ASTRONAUT.read_bytes(), np.uint8)
    request = types.SimpleNamespace(inputs=[pb.Tensor("IMAGE", data)])
    (resp,) = model.execute([request])
    assert not resp.has_error(), resp.error() and resp.error().message()
    got = {t.name(): t.as_numpy() for t in resp.output_tensors}

    # 512x512 with tile 128 (profile max side 256): a tiled pyramid, batched at most 4 tiles per call
    det_calls = [feeds for name, feeds in log if name == "rfdeploy_detector"]
    rank_calls = [feeds for name, feeds in log if name == "rfdeploy_ranker"]
    assert len(det_calls) > 1 and all(f["image"][0][0] <= 4 for f in det_calls)
    assert det_calls[0]["image"][0][1:] == (3, 128, 128)
    # every call fits the engine's profile 0 (64..256 per side), the last, smallest passes padded up
    assert all(64 <= f["image"][0][2] <= 256 and 64 <= f["image"][0][3] <= 256 for f in det_calls)
    assert all(f["image"][1] == np.float32 for f in det_calls)
    assert len(rank_calls) == 1 and rank_calls[0]["boxes"][0] == (1, TINY_N, 5)
    assert max(rank_calls[0]["image"][0][2:]) == 128  # ranker contract: long side 128

    # Same answer as the runtime glue called directly with the same networks.
    cfg = FaceLogicConfig.from_dict(model.settings["facelogic"])
    rgb = load_image(ASTRONAUT).rgb
    ref = detect_faces(rgb, lambda b: (lambda o: (o["boxes"], o["scores"]))(det({"image": b})),
                       lambda i, b: rank({"image": i, "boxes": b})["scores"], cfg)
    assert len(ref) > 0
    np.testing.assert_allclose(got["BOXES"], ref.boxes, atol=1e-4)
    np.testing.assert_allclose(got["SCORES"], ref.scores, atol=1e-5)
    np.testing.assert_allclose(got["DETECTOR_SCORES"], ref.detector_scores, atol=1e-5)
    assert got["IMAGE_SIZE"].tolist() == [512, 512]
    assert (got["BOXES"][:, 2:] > got["BOXES"][:, :2]).all()
    assert got["BOXES"].max() <= 512 + 1e-3


def test_python_model_bad_request_fails_alone(faces_model):
    model, pb, log, det, rank = faces_model
    good = types.SimpleNamespace(inputs=[pb.Tensor("IMAGE", np.frombuffer(ASTRONAUT.read_bytes(), np.uint8))])
    bad = types.SimpleNamespace(inputs=[pb.Tensor("IMAGE", np.frombuffer(b"not an image at all", np.uint8))])
    # TYPE_STRING clients send one bytes object
    as_string = types.SimpleNamespace(inputs=[pb.Tensor("IMAGE", np.array([ASTRONAUT.read_bytes()], dtype=object))])
    r_bad, r_good, r_str = model.execute([bad, good, as_string])
    assert r_bad.has_error() and "InputError" in r_bad.error().message() and "not an image" in r_bad.error().message()
    assert not r_good.has_error() and not r_str.has_error()
    np.testing.assert_array_equal(r_good.output_tensors[0].as_numpy(), r_str.output_tensors[0].as_numpy())
