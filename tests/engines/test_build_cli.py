"""`rfdeploy build-engine` as users type it: with no profile, an rfdeploy model gets the profile the
runtime feeds it; the choice is printed and recorded in the manifest (real TensorRT-RTX builds)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from rfdeploy.cli import main
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.engines.default_profile import detector_profile, ranker_profile
from rfdeploy.engines.manifest import load_manifest
from rfdeploy.engines.profiles import resolve_profile


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _set_metadata(src, dst, items: dict | None):
    import onnx

    m = onnx.load(str(src))
    del m.metadata_props[:]
    for k, v in (items or {}).items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(dst))
    return dst


def test_fp16_detector_without_a_profile_gets_the_runtime_profile(trt_backend, tmp_path, detector_onnx):
    src = tmp_path / "detector.onnx"
    shutil.copy(detector_onnx, src)
    res = _cli("build-engine", src, "--fp16")
    assert res.exit_code == 0, res.output
    engine = tmp_path / "detector.fp16.engine"
    m = load_manifest(engine)
    (prof,) = m.profiles
    assert prof.preset == "default detector" and m.precision == "fp16"
    expected = resolve_profile(detector_profile(PreprocessContract()), {"input": (-1, 3, -1, -1)})
    assert prof.shapes == expected.shapes
    assert "profile #0 (default detector): input min 1x3x64x64, opt 4x3x1024x1024, max 8x3x2048x2048" in res.output


def test_ranker_default_profile_follows_its_contract(trt_backend, tmp_path, ranker_onnx):
    contract = PreprocessContract(resize="long_side", resize_to=128)
    src = _set_metadata(ranker_onnx, tmp_path / "ranker.onnx", {
        "rfdeploy.kind": "ranker", "rfdeploy.contract": contract.to_json(),
        "rfdeploy.config": json.dumps({"name": "tiny", "num_boxes": 10})})
    res = _cli("build-engine", src, "--profile", "default", "--profile", "vga", "-o", tmp_path / "r.engine")
    assert res.exit_code == 0, res.output
    first, second = load_manifest(tmp_path / "r.engine").profiles
    spec = ranker_profile(contract, 10)
    assert first.preset == "default ranker" and first.shapes["image"] == spec.image
    assert first.shapes["boxes"].max == (1, 10, 5) and second.preset == "vga"


def test_dynamic_model_without_metadata_is_refused_before_any_conversion(trt_backend, tmp_path, detector_onnx):
    src = _set_metadata(detector_onnx, tmp_path / "other.onnx", None)
    res = _cli("build-engine", src, "--fp16")
    assert res.exit_code == 2, res.output
    assert "no rfdeploy metadata" in res.output and "--profile PRESET" in res.output
    assert not (tmp_path / "other.fp16.onnx").exists()  # nothing was converted for a build that cannot run
    res = _cli("build-engine", src, "--profile", "tile640")
    assert res.exit_code == 0, res.output
    assert load_manifest(tmp_path / "other.engine").profiles[0].preset == "tile640"


@pytest.mark.parametrize("bad, needle", [(["--profile", "qvga"], "unknown profile preset"),
                                         (["--min-shape", "1x3x32x32"], "--min-shape given without")])
def test_bad_profiles_are_refused_first(trt_backend, tmp_path, detector_onnx, bad, needle):
    src = tmp_path / "d.onnx"
    shutil.copy(detector_onnx, src)
    res = _cli("build-engine", src, "--fp16", *bad)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not (tmp_path / "d.fp16.onnx").exists()


def test_a_ranker_profile_that_cannot_take_portrait_images_is_refused(trt_backend, tmp_path, ranker_onnx):
    """A fixed landscape preset cannot hold a portrait photo resized to the ranker's long side."""
    contract = PreprocessContract(resize="long_side", resize_to=640)
    src = _set_metadata(ranker_onnx, tmp_path / "ranker.onnx", {
        "rfdeploy.kind": "ranker", "rfdeploy.contract": contract.to_json(),
        "rfdeploy.config": json.dumps({"name": "tiny", "num_boxes": 10})})
    res = _cli("build-engine", src, "--profile", "vga")
    assert res.exit_code == 2 and "landscape or portrait" in res.output, res.output
    assert not (tmp_path / "ranker.engine").exists()
    res = _cli("build-engine", src, "--profile", "vga", "--profile", "default")
    assert res.exit_code == 0, res.output
