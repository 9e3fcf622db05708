"""`rfdeploy build-engine` and `info` on ONNX files and engines with the base install: in a fresh
process where torch cannot be imported (tests/no_torch.py), a real TensorRT-RTX build, FP16
variant included."""

from __future__ import annotations

import json
import shutil

from no_torch import run_without_torch

from rfdeploy.core.env import cuda_driver_loads


def test_build_engine_fp16_and_info_run_without_torch(trt_backend, tmp_path, detector_onnx):
    src = tmp_path / "detector.onnx"
    shutil.copy(detector_onnx, src)
    p, attempted, _ = run_without_torch("build-engine", src, "--fp16", cache=tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    # the GPU query (engines.backend.current_gpu) asks torch only where a CUDA driver loads (then,
    # torch missing, the CUDA runtime): without a driver torch is not even attempted
    allowed = {"torch"} if cuda_driver_loads() else set()
    assert set(attempted) <= allowed, attempted
    engine = tmp_path / "detector.fp16.engine"
    assert engine.is_file() and (tmp_path / "detector.fp16.onnx").is_file()
    p, attempted, _ = run_without_torch("info", engine, "--json", cache=tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert set(attempted) <= allowed and d["kind"] == "engine" and d["precision"] == "fp16", d
