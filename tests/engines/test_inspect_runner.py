"""`rfdeploy info` descriptions, and the parts of the runner that run without a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfdeploy.core.errors import BackendUnavailableError, InputError, ModelFileError
from rfdeploy.engines.backend import current_gpu, load_trt_module, normalize_backend_name
from rfdeploy.engines.build import build_engine
from rfdeploy.engines.inspect import describe, format_description
from rfdeploy.engines.profiles import specs_from_cli
from rfdeploy.engines.runner import TensorRTRunner, check_feed, parse_device


def test_describe_onnx(detector_onnx, detector_int8_onnx):
    d = describe(detector_onnx)
    assert d["kind"] == "onnx" and d["opset"] == 17 and d["precision"] == "fp32"
    assert d["inputs"] == [{"name": "input", "shape": ["b", 3, "h", "w"], "dtype": "float32"}]
    # conv weights+biases (BN folded at export): 8*3*9+8 + 16*8*9+16 + 4*16*9+4 + 1*16*9+1
    assert d["parameters"] == 224 + 1168 + 580 + 145
    assert "rfdeploy.contract" in d["metadata"]
    text = format_description(d)
    assert "precision fp32" in text and "rfdeploy.config" in text and "[b, 3, h, w]" in text
    assert describe(detector_int8_onnx)["precision"] == "int8"


def test_describe_engine(trt_backend, tmp_path, detector_fp16_onnx):
    out = tmp_path / "d.engine"
    build_engine(detector_fp16_onnx, out, specs_from_cli(presets=["vga"]))
    d = describe(out)
    assert d["kind"] == "engine" and d["precision"] == "fp16" and d["backend"] == trt_backend
    assert d["metadata"]["rfdeploy.kind"] == "detector"
    text = format_description(d)
    assert "#0 (vga)" in text and "rebuild: rfdeploy build-engine" in text and "plan sha256" in text
    if current_gpu() is None:
        assert d["inspector"].startswith("unavailable: no CUDA GPU")
    (tmp_path / "d.engine.json").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        describe(out)


def test_describe_checkpoints(tmp_path):
    import torch
    from safetensors.torch import save_file

    sd = {"conv.weight": torch.zeros(8, 3, 3, 3), "conv.bias": torch.zeros(8), "fc.weight": torch.zeros(2, 8)}
    st = tmp_path / "model.safetensors"
    save_file(sd, str(st), metadata={"format": "pt"})
    (tmp_path / "model.json").write_text(json.dumps({"name": "tiny", "backbone": "resnet18"}))
    d = describe(st)
    assert (d["tensors"], d["parameters"]) == (3, 216 + 8 + 16)
    assert d["config"]["backbone"] == "resnet18" and d["metadata"] == {"format": "pt"}
    assert "3 tensors, 240 parameters" in format_description(d)

    pt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "epoch": 3}, str(pt))
    d = describe(pt)
    assert (d["tensors"], d["parameters"], d["metadata"]) == (3, 240, {"epoch": 3})

    bad = tmp_path / "bad.pth"
    torch.save({"obj": object.__new__(_NotAllowed)}, str(bad))
    with pytest.raises(ModelFileError, match="not a plain torch state_dict"):
        describe(bad)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError):
        describe(tmp_path / "broken.safetensors")
    with pytest.raises(InputError, match="unknown file type"):
        (tmp_path / "x.txt").write_text("x")
        describe(tmp_path / "x.txt")
    with pytest.raises(InputError, match="not found"):
        describe(tmp_path / "missing.onnx")


class _NotAllowed:
    """A pickled class that weights-only loading must refuse."""


def test_backend_names():
    assert normalize_backend_name(None) is None and normalize_backend_name("auto") is None
    assert normalize_backend_name("rtx") == "tensorrt_rtx" and normalize_backend_name("TensorRT") == "tensorrt"
    with pytest.raises(InputError, match="unknown TensorRT backend"):
        normalize_backend_name("onnxruntime")


def test_named_backend_is_the_only_one_tried(trt_backend):
    mod, name = load_trt_module(trt_backend)
    assert name == trt_backend and hasattr(mod, "Builder")
    missing = "tensorrt" if trt_backend == "tensorrt_rtx" else "tensorrt_rtx"
    try:
        __import__(missing)
    except Exception:  # noqa: BLE001
        with pytest.raises(BackendUnavailableError, match=missing):
            load_trt_module(missing)


def test_runner_preconditions(trt_backend, tmp_path, detector_onnx):
    assert parse_device("cuda") == 0 and parse_device("cuda:1") == 1
    with pytest.raises(InputError, match="CUDA device"):
        parse_device("cpu")
    out = tmp_path / "r.engine"
    m = build_engine(detector_onnx, out, specs_from_cli(presets=["vga"]))
    assert check_feed(m, {"input": np.zeros((1, 3, 480, 640), np.float32)}) == {"input": (1, 3, 480, 640)}
    with pytest.raises(InputError, match="takes inputs"):
        check_feed(m, {"image": np.zeros((1, 3, 480, 640), np.float32)})
    runner = TensorRTRunner(out)
    if current_gpu() is None:
        with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
            runner.activate()
    (tmp_path / "r.engine.json").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        TensorRTRunner(out)
