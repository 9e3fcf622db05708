"""Real engine builds with whatever TensorRT imports here (TensorRT-RTX builds on the CPU)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from rfdeploy.core.errors import BuildError, EngineMismatchError, InputError, ModelFileError
from rfdeploy.engines.backend import BuilderBackend
from rfdeploy.engines.build import build_engine
from rfdeploy.engines.manifest import check_manifest, load_manifest, manifest_path
from rfdeploy.engines.profiles import specs_from_cli

SMALL = dict(min_shapes=["1x3x32x32"], opt_shapes=["1x3x64x64"], max_shapes=["2x3x128x128"])
BUILD_TIMES: dict[str, float] = {}


def _build(name, onnx, out_dir: Path, specs, **kw):
    t = time.perf_counter()
    m = build_engine(onnx, out_dir / f"{name}.engine", specs, **kw)
    BUILD_TIMES[name] = time.perf_counter() - t
    return m


@pytest.fixture(scope="module")
def engines(trt_backend, tmp_path_factory, detector_onnx, detector_fp16_onnx, detector_int8_onnx):
    d = tmp_path_factory.mktemp("engines")
    specs = specs_from_cli(**SMALL)
    out = {
        "fp32": _build("fp32", detector_onnx, d, specs_from_cli(**SMALL, presets=["vga"]),
                       compute_capabilities=["8.6", "sm89"] if trt_backend == "tensorrt_rtx" else None),
        "fp16": _build("fp16", detector_fp16_onnx, d, specs),
        "int8": _build("int8", detector_int8_onnx, d, specs),
    }
    return d, out


def _runtime(m):
    return dict(runtime_backend_name=m.backend, runtime_version=m.backend_version)


def test_fp32_manifest_contents(engines, detector_onnx):
    d, ms = engines
    m = ms["fp32"]
    engine = d / "fp32.engine"
    assert engine.is_file() and manifest_path(engine).is_file()
    loaded = load_manifest(engine)
    assert loaded == m
    backend = BuilderBackend.load()
    assert (m.backend, m.backend_version) == (backend.name, backend.version)
    assert m.plan_sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert m.onnx_sha256 == hashlib.sha256(detector_onnx.read_bytes()).hexdigest()
    assert m.precision == "fp32"
    # All ONNX metadata travels into the manifest (contract, config, anything else).
    assert json.loads(m.metadata["rfdeploy.contract"])["channel_order"] == "RGB"
    assert json.loads(m.metadata["rfdeploy.config"])["name"] == "tiny_test"
    assert m.metadata["rfdeploy.kind"] == "detector"
    assert [(t.name, t.shape, t.dtype) for t in m.inputs] == [("input", (-1, 3, -1, -1), "float32")]
    assert [t.name for t in m.outputs] == ["boxes", "scores"]
    assert len(m.profiles) == 2 and m.profiles[1].preset == "vga"
    assert m.profiles[0].shapes["input"].max == (2, 3, 128, 128)
    if m.backend == "tensorrt_rtx":
        assert m.compute_capabilities == ("8.6", "8.9")
        assert m.rebuild_command[-2:] == ("--backend", "tensorrt_rtx")
    assert "--profile" in m.rebuild_command and "vga" in m.rebuild_command
    assert str(detector_onnx) in m.rebuild_command
    # Nothing but the plan and its manifest is left in the folder (no temp files).
    assert sorted(p.name for p in d.iterdir() if p.name.startswith("fp32")) == ["fp32.engine", "fp32.engine.json"]
    check_manifest(m, engine, **_runtime(m), input_shapes={"input": (1, 3, 480, 640)})


def test_default_rtx_targets(trt_backend, engines):
    if trt_backend != "tensorrt_rtx":
        pytest.skip("compute-capability targets are a TensorRT-RTX feature")
    ccs = engines[1]["fp16"].compute_capabilities
    assert "8.6" in ccs and "12.0" in ccs and "7.5" not in ccs


def test_precision_recorded(engines):
    _, ms = engines
    assert ms["fp16"].precision == "fp16"
    assert ms["int8"].precision == "int8"
    # Mixed precision keeps float32 I/O (keep_io_types), so feeding code is the same.
    assert ms["fp16"].inputs[0].dtype == "float32"


def test_int8_plan_differs_from_fp32_for_same_profile(engines, tmp_path, detector_onnx):
    _, ms = engines
    fp32 = build_engine(detector_onnx, tmp_path / "ref.engine", specs_from_cli(**SMALL))
    assert ms["int8"].build_options["plan_bytes"] != fp32.build_options["plan_bytes"]


def test_refusals(engines, tmp_path):
    d, ms = engines
    m = ms["fp32"]
    engine = tmp_path / "copy.engine"
    shutil.copy(d / "fp32.engine", engine)
    shutil.copy(manifest_path(d / "fp32.engine"), manifest_path(engine))
    m = load_manifest(engine)

    with pytest.raises(EngineMismatchError, match="this runtime has 0.0.1") as e:
        check_manifest(m, engine, runtime_backend_name=m.backend, runtime_version="0.0.1")
    assert "rfdeploy build-engine" in str(e.value)  # the rebuild command is in the hint

    other = "tensorrt" if m.backend == "tensorrt_rtx" else "tensorrt_rtx"
    with pytest.raises(EngineMismatchError, match=f"this runtime uses {other}"):
        check_manifest(m, engine, runtime_backend_name=other, runtime_version=m.backend_version)

    if m.compute_capabilities:
        with pytest.raises(EngineMismatchError, match="compute capability 9.0"):
            check_manifest(m, engine, **_runtime(m), gpu_cc="9.0")
        check_manifest(m, engine, **_runtime(m), gpu_cc=m.compute_capabilities[0])

    with pytest.raises(EngineMismatchError, match="outside every profile"):
        check_manifest(m, engine, **_runtime(m), input_shapes={"input": (1, 3, 1088, 1920)})
    with pytest.raises(EngineMismatchError, match="outside every profile"):
        check_manifest(m, engine, **_runtime(m), input_shapes={"input": (3, 3, 64, 64)})

    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match="sha256"):
        check_manifest(m, engine, **_runtime(m))

    manifest_path(engine).unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_manifest(engine)


def test_ranker_batch_of_boxes_follows_image(trt_backend, tmp_path, ranker_onnx):
    m = build_engine(ranker_onnx, tmp_path / "r.engine", specs_from_cli(presets=["tile1024"]))
    p = m.profiles[0]
    assert p.shapes["image"].opt == (4, 3, 1024, 1024)
    assert (p.shapes["boxes"].min, p.shapes["boxes"].opt, p.shapes["boxes"].max) == ((1, 10, 5), (4, 10, 5), (8, 10, 5))
    assert [t.name for t in m.inputs] == ["image", "boxes"] and m.outputs[0].name == "scores"
    check_manifest(m, tmp_path / "r.engine", **_runtime(m), input_shapes={"image": (2, 3, 1024, 1024), "boxes": (2, 10, 5)})


def test_ranker_dynamic_n_needs_and_takes_boxes_shapes(trt_backend, tmp_path, ranker_dynamic_n_onnx):
    with pytest.raises(InputError, match=r"input 'boxes'.*dynamic dimensions \[0, 1\]"):
        build_engine(ranker_dynamic_n_onnx, tmp_path / "r.engine", specs_from_cli(presets=["vga"]))
    assert not (tmp_path / "r.engine").exists()
    specs = specs_from_cli(["boxes:1x1x5"], ["boxes:1x100x5"], ["boxes:1x3840x5"], presets=["vga"])
    m = build_engine(ranker_dynamic_n_onnx, tmp_path / "r.engine", specs)
    assert m.profiles[0].shapes["boxes"].max == (1, 3840, 5)
    assert "boxes:1x3840x5" in m.rebuild_command


def test_third_party_retinaface_builds(trt_backend, tmp_path, retinaface_onnx):
    t = time.perf_counter()
    m = build_engine(retinaface_onnx, tmp_path / "rf.engine", specs_from_cli(presets=["vga"]))
    BUILD_TIMES["retinaface"] = time.perf_counter() - t
    assert [t.name for t in m.outputs] == ["loc", "conf", "landmarks"]
    assert m.precision == "fp32" and (tmp_path / "rf.engine").stat().st_size > 100_000


def _assert_nothing_left(folder: Path, stem: str):
    assert [p.name for p in folder.iterdir() if stem in p.name] == []


def test_parse_failure_names_the_node(trt_backend, tmp_path, unknown_op_onnx):
    out = tmp_path / "bad.engine"
    with pytest.raises(BuildError) as e:
        build_engine(unknown_op_onnx, out, [])
    msg = str(e.value)
    assert "could not parse" in msg and "FrobnicateLinear" in msg and "node #1" in msg
    assert e.value.exit_code != 0 and e.value.hint
    _assert_nothing_left(tmp_path, "bad.engine")


def test_corrupt_onnx_is_a_build_error(trt_backend, tmp_path):
    src = tmp_path / "corrupt.onnx"
    src.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    with pytest.raises(BuildError, match="not a readable ONNX"):
        build_engine(src, tmp_path / "c.engine", [])
    _assert_nothing_left(tmp_path, "c.engine")


def test_build_failure_leaves_no_file_and_keeps_no_stale_manifest(trt_backend, tmp_path, nms_onnx):
    if trt_backend != "tensorrt_rtx":
        pytest.skip("data-centre TensorRT can build NonMaxSuppression")
    out = tmp_path / "nms.engine"
    with pytest.raises(BuildError, match="failed to build"):
        build_engine(nms_onnx, out, [])
    _assert_nothing_left(tmp_path, "nms.engine")


def test_bad_build_arguments(trt_backend, tmp_path, detector_onnx):
    specs = specs_from_cli(**SMALL)
    with pytest.raises(InputError, match="opt-level"):
        build_engine(detector_onnx, tmp_path / "x.engine", specs, opt_level=9)
    with pytest.raises(InputError, match="no profile was given"):
        build_engine(detector_onnx, tmp_path / "x.engine", [])
    with pytest.raises(InputError, match="output folder"):
        build_engine(detector_onnx, tmp_path / "nope" / "x.engine", specs)
    if trt_backend == "tensorrt_rtx":
        with pytest.raises(InputError, match="cannot target compute capability 9.0"):
            build_engine(detector_onnx, tmp_path / "x.engine", specs, compute_capabilities=["9.0"])
    _assert_nothing_left(tmp_path, "x.engine")


def test_float32_layers_build_without_tf32(engines):
    # TensorRT turns TF32 on by default; the ONNX file alone decides precision (fp16/int8 variants)
    _, out = engines
    assert {name: m.build_options["tf32"] for name, m in out.items()} == {"fp32": False, "fp16": False, "int8": False}


def test_options_are_applied_and_recorded(trt_backend, tmp_path, detector_onnx):
    tc = tmp_path / "timing.cache"
    m = build_engine(detector_onnx, tmp_path / "o.engine", specs_from_cli(**SMALL), workspace_mb=64, opt_level=1,
                     timing_cache=tc)
    assert m.build_options["workspace_mb"] == 64 and m.build_options["opt_level"] == 1
    assert ["--workspace-mb", "64"] == list(m.rebuild_command[m.rebuild_command.index("--workspace-mb"):][:2])
    if trt_backend == "tensorrt_rtx":
        assert "ignored" in m.build_options["timing_cache_note"] and not tc.exists()
    else:
        assert tc.stat().st_size > 0


def test_zz_build_times_under_budget(engines):
    # Every engine above is tiny; a regression to slow builds should show here.
    assert BUILD_TIMES, "no builds measured"
    print("engine build seconds:", {k: round(v, 2) for k, v in BUILD_TIMES.items()})
    assert sum(BUILD_TIMES.values()) < 60


def test_cli_entry_defaults_and_records_argv(trt_backend, tmp_path, detector_onnx):
    from rfdeploy.engines.build import build_engine_cli

    src = tmp_path / "model.onnx"
    shutil.copy(detector_onnx, src)
    argv = ["rfdeploy", "build-engine", str(src), "--fp16", "--profile", "vga"]
    m = build_engine_cli(src, presets=["vga"], opt_level=0, argv=argv)
    assert (tmp_path / "model.engine").is_file() and m.rebuild_command == tuple(argv)
    assert load_manifest(tmp_path / "model.engine").build_options["opt_level"] == 0


def test_package_imports_without_tensorrt():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['tensorrt'] = None; sys.modules['tensorrt_rtx'] = None\n"
        "import rfdeploy.engines.build, rfdeploy.engines.runner, rfdeploy.engines.inspect\n"
        "from rfdeploy.core.errors import BackendUnavailableError\n"
        "from rfdeploy.engines.backend import load_trt_module\n"
        "try:\n    load_trt_module()\nexcept BackendUnavailableError as e:\n    print('refused:', e.hint)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "refused: pip install" in r.stdout


def test_roi_ranker_builds_with_its_default_profile(trt_backend, tmp_path):
    """The RoI ranker samples its rows with GridSample (no plugin op): TensorRT parses and builds it
    with the default ranker profile, whose unpadded image may be as small as 1x1."""
    import torch

    from rfdeploy.core.contract import PreprocessContract
    from rfdeploy.engines.default_profile import profile_for
    from rfdeploy.export.api import export_checkpoint
    from rfdeploy.models import build, ranker_config
    from rfdeploy.models.checkpoint import save_checkpoint

    contract = PreprocessContract(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR",
                                  resize="long_side", resize_to=96, pad_multiple=1)
    torch.manual_seed(0)
    save_checkpoint(build(ranker_config("crface_roi", num_boxes=16, contract=contract)).eval(), tmp_path / "r.safetensors")
    list(export_checkpoint(tmp_path / "r.safetensors", tmp_path / "r.onnx"))
    kind, spec = profile_for(tmp_path / "r.onnx")
    m = build_engine(tmp_path / "r.onnx", tmp_path / "r.engine", [spec])
    shapes = m.profiles[0].shapes
    assert kind == "ranker" and m.backend == trt_backend
    assert (shapes["image"].min, shapes["image"].max) == ((1, 3, 1, 1), (1, 3, 96, 96))
    assert shapes["boxes"].min == shapes["boxes"].max == (1, 16, 5)
    assert (tmp_path / "r.engine").stat().st_size > 0
