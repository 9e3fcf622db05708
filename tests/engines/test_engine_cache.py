"""Engines built on first use into a cache (rfdeploy.engines.engine_cache).

Real engines are built with TensorRT-RTX on the CPU (its builder needs no GPU) from tiny RefineFace
and CRFace models exported with rfdeploy's own exporter. Running those engines needs a GPU that
TensorRT-RTX supports, which this project's CI does not have: the execution of the cached engines
is NOT tested here, only their building, keys, reuse, rebuild decisions, profiles and file hygiene.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rfdeploy.core.errors import BuildError, InputError, ModelFileError
from rfdeploy.core.metadata import set_onnx_metadata
from rfdeploy.engines.default_profile import profile_for
from rfdeploy.engines.engine_cache import default_engine_cache_dir, ensure_engine
from rfdeploy.engines.manifest import check_manifest, load_manifest, manifest_path
from rfdeploy.engines.profiles import select_profile

pytestmark = pytest.mark.slow

RTX = "tensorrt_rtx"
CC = "8.6"  # a generation TensorRT-RTX targets by default


@pytest.fixture(scope="module")
def rtx():
    try:
        import tensorrt_rtx
    except Exception as e:  # noqa: BLE001 - a broken install fails with more than ImportError
        pytest.skip(f"tensorrt_rtx does not import here ({type(e).__name__}: {e}): no engine can be built")
    return tensorrt_rtx


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny detector and ranker exported to ONNX the way `rfdeploy export` does."""
    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.models import build
    from rfdeploy.models.config import detector_config, ranker_config

    d = tmp_path_factory.mktemp("models")
    # two-conv heads without RFE: the same graph shape, and half the export and build time
    det = build(detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=100,
                                head_convs=2, use_rfe=False))
    export_model(det, d / "det.onnx", sample_size=(64, 64))
    rk = build(ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64))
    export_model(rk, d / "rk.onnx", sample_size=(64, 64))
    return d / "det.onnx", d / "rk.onnx"


def _ensure(onnx, cache, **kw):
    notes, said = [], []
    path = ensure_engine(onnx, cache, prefer_backend=RTX, gpu_cc=kw.pop("gpu_cc", CC), notes=notes,
                         echo=said.append, **kw)
    return path, notes, said


def _runtime(rtx):
    return {"runtime_backend_name": RTX, "runtime_version": rtx.__version__}


def _with_metadata(src: Path, dst: Path, **props) -> Path:
    import onnx

    m = onnx.load(str(src))
    set_onnx_metadata(m, props)
    onnx.save(m, str(dst))
    return dst


# --- detector: first build, reuse, profile ----------------------------------------------------


@pytest.fixture(scope="module")
def det_engine(rtx, models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("det-cache")
    return cache, *_ensure(models[0], cache)


def test_first_call_builds_then_reuses(rtx, models, det_engine):
    cache, engine, notes, said = det_engine
    assert engine.parent == cache and engine.is_file() and manifest_path(engine).is_file()
    stem, _, key = engine.stem.rpartition("-")
    assert stem == "det" and len(key) == 16 and int(key, 16) >= 0
    assert notes[-1].startswith("built the detector engine")
    assert said and "building the TensorRT detector engine" in said[0] and "8.6" in said[0]
    m = load_manifest(engine)
    check_manifest(m, engine, **_runtime(rtx), gpu_cc=CC)
    assert m.compute_capabilities == (CC,)
    assert m.metadata["rfdeploy.kind"] == "detector"
    (prof,) = m.profiles
    assert prof.shapes["image"].to_dict() == {
        "min": [1, 3, 64, 64], "opt": [4, 3, 1024, 1024], "max": [8, 3, 2048, 2048]}
    assert str(engine) in m.rebuild_command and str(models[0]) in m.rebuild_command

    before = engine.stat().st_mtime_ns, manifest_path(engine).stat().st_mtime_ns
    again, notes2, said2 = _ensure(models[0], cache)
    assert again == engine
    assert (engine.stat().st_mtime_ns, manifest_path(engine).stat().st_mtime_ns) == before
    assert notes2 == [f"reused the cached detector engine {engine}"] and said2 == []
    # Only the plan, its manifest and the (empty) lock file: no temporary files.
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [engine.name, engine.name + ".json", f".{engine.name}.lock"])


def test_leftovers_of_a_dead_build_are_removed(rtx, models, det_engine):
    cache, engine, *_ = det_engine
    dead = [cache / f".{engine.name}.tmp-999-dead", cache / f".{engine.name}.tmp-999-dead.json",
            cache / f"..{engine.name}.tmp-999-dead.abc.part"]
    for p in dead:
        p.write_bytes(b"half")
    assert _ensure(models[0], cache)[0] == engine
    assert not any(p.exists() for p in dead)


def test_pipeline_inputs_stay_inside_the_detector_profile(det_engine):
    """What the pipeline feeds an engine-backed detector, for small, large and huge images, fits the
    cached engine's profile (so no tile, pass or untiled image is ever refused)."""
    from rfdeploy.runtime.backends.trt_runner import TrtRunner
    from rfdeploy.runtime.facelogic import detector_batches
    from rfdeploy.runtime.models import Detector
    from rfdeploy.runtime.pipeline import FacePipeline

    _, engine, *_ = det_engine
    runner = TrtRunner(engine)  # reads the manifest only; nothing runs
    assert (runner.max_batch, runner.max_input(), runner.min_input()) == (8, (2048, 2048), (64, 64))
    pipe = FacePipeline(Detector(runner))
    cfg = pipe.logic_config()
    profiles = runner.manifest.profiles
    seen = set()
    for w, h in [(7, 5), (640, 480), (2048, 2048), (2047, 1999), (2049, 64), (4100, 3000), (300, 5000)]:
        for batch, _ in detector_batches(np.zeros((h, w, 3), np.uint8), cfg):
            seen.add(batch.shape)
            select_profile(profiles, {"image": batch.shape})  # raises when outside every profile
    assert (1, 3, 2048, 2048) in seen and any(s[0] == 8 for s in seen)


# --- ranker: profile, changed file, manifest checks, failures ---------------------------------


def test_ranker_profile_follows_its_contract(models):
    kind, spec = profile_for(models[1])
    assert kind == "ranker"
    assert spec.image.min == (1, 3, 32, 32) and spec.image.max == (1, 3, 1024, 1024)
    assert spec.named["boxes"].max == (1, 64, 5) == spec.named["boxes"].min
    with pytest.raises(ModelFileError, match="ranker model, not a detector"):
        profile_for(models[1], "detector")


def test_ranker_engine_and_changed_onnx_gets_a_new_key(rtx, models, tmp_path):
    cache = tmp_path / "cache"
    first, _, _ = _ensure(models[1], cache)
    m = load_manifest(first)
    assert m.profiles[0].shapes["boxes"].max == (1, 64, 5)
    assert m.profiles[0].shapes["image"].max == (1, 3, 1024, 1024)
    changed = _with_metadata(models[1], tmp_path / "rk.onnx", **{"rfdeploy.version": "changed"})
    second, notes2, _ = _ensure(changed, cache)
    assert second != first and second.stem.rpartition("-")[0] == first.stem.rpartition("-")[0]
    assert notes2[-1].startswith("built") and first.is_file() and second.is_file()
    # Another GPU generation is another engine too.
    third, _, _ = _ensure(models[1], cache, gpu_cc="8.9")
    assert third not in (first, second) and load_manifest(third).compute_capabilities == ("8.9",)


@pytest.mark.parametrize("damage", ["tensorrt_version", "plan_bytes", "no_manifest"])
def test_unfit_cached_engine_is_rebuilt(rtx, models, tmp_path, damage):
    cache = tmp_path / "cache"
    engine, _, _ = _ensure(models[1], cache)
    mp = manifest_path(engine)
    if damage == "tensorrt_version":
        d = json.loads(mp.read_text())
        d["backend_version"] = "0.9.0"
        mp.write_text(json.dumps(d))
        why = f"built with tensorrt_rtx 0.9.0, this runtime has {rtx.__version__}"
    elif damage == "plan_bytes":
        with open(engine, "ab") as f:
            f.write(b"\0")
        why = "sha256"
    else:
        mp.unlink()
        why = "manifest"
    again, notes, said = _ensure(models[1], cache)
    assert again == engine
    assert notes[-1].startswith(f"rebuilt the ranker engine {engine} because") and why in notes[-1]
    assert "rebuilding" in said[0]
    check_manifest(load_manifest(engine), engine, **_runtime(rtx), gpu_cc=CC)
    assert len(list(cache.glob("*.engine"))) == 1


def test_fp16_builds_from_a_cached_fp16_onnx(rtx, tmp_path):
    """A ranker the FP16 converter handles (the toy ranker of the precision tests, given ranker
    metadata; its N is dynamic, so the config's num_boxes fixes it)."""
    from rfdeploy.core.contract import PreprocessContract
    from tests.precision_fixtures import export_toy_ranker

    toy = export_toy_ranker(tmp_path / "toy.onnx")
    contract = PreprocessContract(resize="long_side", resize_to=256)
    rk = _with_metadata(toy, tmp_path / "toy_ranker.onnx", **{
        "rfdeploy.kind": "ranker", "rfdeploy.contract": contract.to_json(), "rfdeploy.config": '{"num_boxes": 32}'})
    cache = tmp_path / "cache"
    engine, notes, _ = _ensure(rk, cache, precision="fp16")
    assert engine.name.startswith("toy_ranker-fp16-")
    (fp16_onnx,) = cache.glob("*.fp16.onnx")
    m = load_manifest(engine)
    assert m.precision == "fp16" and m.onnx_file == str(fp16_onnx)
    assert m.profiles[0].shapes["boxes"].max == (1, 32, 5)
    assert any("FP16 ONNX" in n for n in notes)
    mtime = fp16_onnx.stat().st_mtime_ns
    again, notes2, _ = _ensure(rk, cache, precision="fp16")
    assert again == engine and notes2 == [f"reused the cached ranker engine {engine}"]
    assert fp16_onnx.stat().st_mtime_ns == mtime
    fp32, _, _ = _ensure(rk, cache)
    assert fp32 != engine and load_manifest(fp32).precision == "fp32"


def test_fp16_engine_of_the_exported_ranker(rtx, models, tmp_path):
    engine, _, _ = _ensure(models[1], tmp_path / "cache", precision="fp16")
    assert load_manifest(engine).precision == "fp16"


def test_failed_build_leaves_no_engine(rtx, models, tmp_path):
    import onnx
    from onnx import helper

    m = onnx.load(str(models[1]))
    out = m.graph.output[0]
    m.graph.node.append(helper.make_node("FrobnicateLinear", [out.name], ["frobnicated"], name="mystery"))
    out.name = "frobnicated"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    cache = tmp_path / "cache"
    with pytest.raises(BuildError, match="mystery|Frobnicate"):
        _ensure(bad, cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_bad_arguments(rtx, models, tmp_path):
    with pytest.raises(InputError, match="precision"):
        ensure_engine(models[1], tmp_path, precision="int8", prefer_backend=RTX)
    with pytest.raises(InputError, match="not found"):
        ensure_engine(tmp_path / "missing.onnx", tmp_path, prefer_backend=RTX)
    with pytest.raises(InputError, match="compute capability"):
        ensure_engine(models[1], tmp_path, gpu_cc="fast", prefer_backend=RTX)
    import onnx

    m = onnx.load(str(models[1]))
    del m.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(m, str(plain))
    with pytest.raises(ModelFileError, match="rfdeploy.kind"):
        ensure_engine(plain, tmp_path / "c", prefer_backend=RTX, gpu_cc=CC)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.engine"))


def test_concurrent_processes_build_once(rtx, models, tmp_path):
    """Two processes asking for the same engine at once: one builds, the other waits and reuses."""
    cache = tmp_path / "cache"
    code = (
        "import json, sys\n"
        "from rfdeploy.engines.engine_cache import ensure_engine\n"
        "notes = []\n"
        f"p = ensure_engine(sys.argv[1], sys.argv[2], prefer_backend={RTX!r}, gpu_cc={CC!r}, notes=notes,"
        " echo=lambda s: None)\n"
        "print(json.dumps([str(p), notes]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(models[1]), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0][0] == results[1][0]
    kinds = sorted(r[1][-1].split()[0] for r in results)
    assert kinds == ["built", "reused"]
    engine = Path(results[0][0])
    check_manifest(load_manifest(engine), engine, **_runtime(rtx), gpu_cc=CC)
    assert sorted(p.name for p in cache.iterdir()) == sorted([engine.name, engine.name + ".json",
                                                              f".{engine.name}.lock"])


# --- open_runner -------------------------------------------------------------------------------


def test_open_runner_tensorrt_builds_into_the_engine_cache(rtx, models, tmp_path):
    from rfdeploy.engines.backend import current_gpu
    from rfdeploy.runtime.backends.selection import open_runner
    from rfdeploy.runtime.backends.trt_runner import TrtRunner

    if current_gpu() is not None:
        pytest.skip("this test covers the GPU-less build (all default TensorRT-RTX targets)")
    notes: list[str] = []
    runner = open_runner(models[1], backend="tensorrt", engine_cache=tmp_path / "engines", notes=notes)
    assert isinstance(runner, TrtRunner) and Path(runner.path).parent == tmp_path / "engines"
    assert runner.metadata["rfdeploy.kind"] == "ranker"
    assert "8.6" in runner.manifest.compute_capabilities and len(runner.manifest.compute_capabilities) > 1
    assert notes[-1].startswith("built the ranker engine")
    again = open_runner(models[1], backend="tensorrt", engine_cache=tmp_path / "engines", notes=notes)
    assert again.path == runner.path and notes[-1].startswith("reused")


def test_open_runner_auto_without_gpu_keeps_onnxruntime(rtx, models, tmp_path):
    from rfdeploy.core.env import cuda_available
    from rfdeploy.runtime.backends.ort_runner import OrtRunner
    from rfdeploy.runtime.backends.selection import open_runner

    if cuda_available():
        pytest.skip("a CUDA GPU is visible: auto would build an engine")
    notes: list[str] = []
    runner = open_runner(models[1], backend="auto", engine_cache=tmp_path / "engines", notes=notes)
    assert isinstance(runner, OrtRunner)
    assert "TensorRT engines not used: no CUDA GPU is visible" in notes
    assert not (tmp_path / "engines").exists()
    with pytest.raises(InputError, match="precision"):
        open_runner(models[1], backend="auto", precision="int4")


def test_default_engine_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RFDEPLOY_ENGINE_CACHE", str(tmp_path / "volume"))
    assert default_engine_cache_dir() == tmp_path / "volume"
    monkeypatch.delenv("RFDEPLOY_ENGINE_CACHE")
    monkeypatch.setenv("RFDEPLOY_CACHE", str(tmp_path / "c"))
    assert default_engine_cache_dir() == tmp_path / "c" / "engines"
