"""Manifest round trip, validation, and refusals on a plan file whose bytes we control.

These need no TensorRT: check_manifest only compares the manifest with the runtime's facts and
the file's bytes. test_build.py repeats the refusals on real built engines.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from rfdeploy.core.errors import EngineMismatchError, ModelFileError
from rfdeploy.engines.manifest import (
    IOTensor,
    Manifest,
    check_manifest,
    load_manifest,
    manifest_path,
    normalize_cc,
)
from rfdeploy.engines.profiles import Profile, ShapeRange

PLAN = b"plan bytes standing in for a serialized engine" * 50


def _manifest(plan: bytes = PLAN, ccs=("8.6", "8.9")) -> Manifest:
    return Manifest(
        backend="tensorrt_rtx",
        backend_version="1.7.1.116",
        compute_capabilities=ccs,
        build_gpu="unknown",
        precision="fp16",
        profiles=(
            Profile({"input": ShapeRange((1, 3, 32, 32), (1, 3, 480, 640), (1, 3, 1088, 1920))}),
            Profile({"input": ShapeRange((1, 3, 1024, 1024), (4, 3, 1024, 1024), (8, 3, 1024, 1024))}, "tile1024"),
        ),
        inputs=(IOTensor("input", (-1, 3, -1, -1), "float32"),),
        outputs=(IOTensor("scores", (-1, 100), "float32"),),
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        onnx_sha256="0" * 64,
        onnx_file="m.onnx",
        rfdeploy_version="0.1.0",
        metadata={"rfdeploy.contract": "{}"},
        rebuild_command=("rfdeploy", "build-engine", "m fp16.onnx", "-o", "m.engine", "--profile", "tile1024"),
    )


@pytest.fixture
def engine(tmp_path):
    p = tmp_path / "m.engine"
    p.write_bytes(PLAN)
    m = _manifest()
    m.write(p)
    return p, m


RT = dict(runtime_backend_name="tensorrt_rtx", runtime_version="1.7.1.116")


def test_roundtrip_and_path(engine):
    p, m = engine
    assert manifest_path(p).name == "m.engine.json"
    assert load_manifest(p) == m
    d = json.loads(manifest_path(p).read_text())
    assert d["rebuild_command_str"] == "rfdeploy build-engine 'm fp16.onnx' -o m.engine --profile tile1024"
    assert d["compute_capabilities"] == ["8.6", "8.9"]
    unknown = _manifest(ccs=())
    assert Manifest.from_dict(json.loads(unknown.to_json())).compute_capabilities == ()
    assert json.loads(unknown.to_json())["compute_capabilities"] == "unknown"


def test_accepts_matching_runtime(engine):
    p, m = engine
    check_manifest(m, p, **RT, gpu_cc="8.9", input_shapes={"input": (6, 3, 1024, 1024)})
    check_manifest(m, p, **RT, gpu_cc="sm86")
    # Unknown targets (TensorRT built without a visible GPU) cannot be checked here; TensorRT will.
    check_manifest(_manifest(ccs=()), p, **RT, gpu_cc="9.0")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(runtime_version="1.7.0.0"), "built with tensorrt_rtx 1.7.1.116, this runtime has 1.7.0.0"),
        (dict(runtime_backend_name="tensorrt", runtime_version="10.13.0"), "this runtime uses tensorrt"),
        (dict(gpu_cc="9.0"), "compute capability 9.0, the engine targets 8.6, 8.9"),
        (dict(input_shapes={"input": (1, 3, 2176, 3840)}), "outside every profile"),
        (dict(input_shapes={"input": (2, 3, 480, 640)}), "outside every profile"),
    ],
)
def test_refusals_say_what_differs_and_how_to_rebuild(engine, kwargs, message):
    p, m = engine
    with pytest.raises(EngineMismatchError, match=message) as e:
        check_manifest(m, p, **{**RT, **kwargs})
    assert e.value.hint == "rebuild it: " + m.rebuild_command_str
    assert e.value.exit_code == EngineMismatchError.exit_code != 0


def test_sha_mismatch(engine):
    p, m = engine
    p.write_bytes(PLAN[:-1] + b"!")
    with pytest.raises(EngineMismatchError, match="sha256"):
        check_manifest(m, p, **RT)


def test_missing_or_corrupt_manifest(engine):
    p, _ = engine
    mp = manifest_path(p)
    good = mp.read_text()
    mp.write_text(good[: len(good) // 2])
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_manifest(p)
    d = json.loads(good)
    del d["plan_sha256"]
    mp.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="malformed.*plan_sha256"):
        load_manifest(p)
    mp.write_text(json.dumps({**json.loads(good), "schema_version": 99}))
    with pytest.raises(ModelFileError, match="newer"):
        load_manifest(p)
    mp.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="not a JSON object"):
        load_manifest(p)
    mp.unlink()
    with pytest.raises(ModelFileError, match="missing") as e:
        load_manifest(p)
    assert "build-engine" in e.value.hint


def test_manifest_write_is_atomic(engine, monkeypatch):
    p, m = engine
    before = manifest_path(p).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        _manifest(ccs=("12.0",)).write(p)
    assert manifest_path(p).read_bytes() == before
    assert sorted(x.name for x in p.parent.iterdir()) == ["m.engine", "m.engine.json"]


def test_normalize_cc():
    assert [normalize_cc(c) for c in ("8.6", "sm86", "SM_89", "86", "12.0", "sm120", "120", 9.0)] == [
        "8.6", "8.6", "8.9", "8.6", "12.0", "12.0", "12.0", "9.0"]
    for bad in ("ampere", "8", "x.y"):
        with pytest.raises(ValueError):
            normalize_cc(bad)
