"""One FaceLogicConfig for running and serving: the Triton repository's faces model and
``rfdeploy infer`` (FacePipeline) get their settings from the same factory, fed the same model
metadata and engine limits, so they plan the same tiles for the same image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rfdeploy.core.errors import InputError
from rfdeploy.runtime.facelogic import FaceLogicConfig, plan_for
from rfdeploy.runtime.tiling import TilePolicy
from tests.deploy.triton_fixtures import fake_server_env  # noqa: F401  (fixture)

UHD_8K = (7680, 4320)


def _served_config(repo) -> FaceLogicConfig:
    return FaceLogicConfig.from_dict(json.loads((repo.path / "rfdeploy_faces" / "1" / "faces.json").read_text())["facelogic"])


def _plan_summary(cfg: FaceLogicConfig, w: int, h: int):
    plan = plan_for(w, h, cfg)
    return None if plan is None else [(p.width, p.height, p.tile_shape, len(p.tiles), p.overlap) for p in plan.passes]


@pytest.fixture(scope="module")
def runtime_profile_engines(tiny_onnx, tmp_path_factory):
    """The tiny networks built with the runtime's default detector profile (batch 1-8, 64..2048 px):
    the profile on which the 8K plans of infer and Triton used to differ."""
    import importlib.util

    if not any(importlib.util.find_spec(n) for n in ("tensorrt", "tensorrt_rtx")):
        pytest.skip("neither tensorrt nor tensorrt_rtx imports here: engine builds cannot run")
    from rfdeploy.engines.build import build_engine
    from rfdeploy.engines.profiles import specs_from_cli

    d = tmp_path_factory.mktemp("runtime_profile")
    det = d / "detector.engine"
    build_engine(tiny_onnx["detector"], det, specs_from_cli(["1x3x64x64"], ["4x3x1024x1024"], ["8x3x2048x2048"]))
    rank = d / "ranker.engine"
    build_engine(tiny_onnx["ranker"], rank, specs_from_cli(["1x3x64x64"], ["1x3x128x128"], ["1x3x128x128"]))
    return {"detector": det, "ranker": rank}


def _engine_pipeline(engines, **options):
    from rfdeploy.runtime.backends.trt_runner import TrtRunner
    from rfdeploy.runtime.models import Detector, Ranker
    from rfdeploy.runtime.pipeline import FacePipeline, PipelineOptions

    # TrtRunner reads the manifest only until it runs: nothing executes on a GPU here
    return FacePipeline(Detector(TrtRunner(engines["detector"])), Ranker(TrtRunner(engines["ranker"])),
                        PipelineOptions(**options))


@pytest.mark.parametrize("tile", ["auto", "512", "1024"])
def test_triton_plans_an_8k_image_as_infer_does(runtime_profile_engines, tmp_path, tile):
    from rfdeploy.deploy.triton import write_triton_repo

    repo = write_triton_repo(tmp_path / "repo", runtime_profile_engines["detector"], runtime_profile_engines["ranker"],
                             tile=tile)
    served = _served_config(repo)
    run = _engine_pipeline(runtime_profile_engines, tile=tile).logic_config()
    assert served == run
    assert _plan_summary(served, *UHD_8K) == _plan_summary(run, *UHD_8K)
    assert _plan_summary(run, *UHD_8K) is not None


def test_settings_come_from_the_model_config_and_the_engine(runtime_profile_engines):
    cfg = _engine_pipeline(runtime_profile_engines).logic_config()
    # the tiny detector's config has RefineFace's default anchors: largest 128 * 2 * sqrt(2)
    assert cfg.tile_max_face == round(128 * 2 * 2 ** 0.5)
    # candidates merged over all tiles: not capped at one call's top K (the tiny detector's 64)
    assert cfg.max_candidates >= 5000
    assert cfg.max_batch == 8 and cfg.max_input_size == (2048, 2048) and cfg.min_input == (64, 64)
    plan = plan_for(*UHD_8K, cfg)
    assert all(p.overlap >= cfg.tile_max_face for p in plan.passes if len(p.tiles) > 1)


def test_cpu_repository_plans_as_infer_on_onnxruntime(tiny_onnx, tmp_path, fake_server_env):  # noqa: F811
    from rfdeploy.deploy.triton import write_triton_repo
    from rfdeploy.runtime.pipeline import FacePipeline

    repo = write_triton_repo(tmp_path / "repo", tiny_onnx["detector"], tiny_onnx["ranker"], cpu=True,
                             server_env=fake_server_env)
    pipe = FacePipeline.create(detector=tiny_onnx["detector"], ranker=tiny_onnx["ranker"], backend="onnxruntime")
    served = _served_config(repo)
    assert served == pipe.logic_config()
    assert _plan_summary(served, *UHD_8K) == _plan_summary(pipe.logic_config(), *UHD_8K)


def test_tile_policy_is_one_grammar(runtime_profile_engines, tmp_path):
    from rfdeploy.deploy.triton import write_triton_repo

    # the same spellings are accepted (and the same refused) by infer's options and triton-repo
    run = _engine_pipeline(runtime_profile_engines, tile=" AUTO ").logic_config()
    repo = write_triton_repo(tmp_path / "repo", runtime_profile_engines["detector"], tile="AUTO")
    assert run.tile == _served_config(repo).tile == TilePolicy("auto")
    for bad in ("12", "big", "1024px"):
        with pytest.raises(InputError) as infer_err:
            _engine_pipeline(runtime_profile_engines, tile=bad)
        with pytest.raises(InputError) as repo_err:
            write_triton_repo(tmp_path / f"r{bad}", runtime_profile_engines["detector"], tile=bad)
        assert str(infer_err.value) == str(repo_err.value)
    assert not [p for p in tmp_path.iterdir() if p.name != "repo"]


def test_tile_policy_parses_once_and_writes_back():
    assert [str(TilePolicy.parse(s)) for s in ("auto", " OFF ", "1024", 512)] == ["auto", "off", "1024", "512"]
    p = TilePolicy.parse("768")
    assert TilePolicy.parse(p) is p and p == "768" and p != "auto" and p != "nonsense"
    assert (p.tile_size(4000, 3000), p.tile_size(100, 100)) == (768, 768)
    assert TilePolicy.parse("auto").tile_size(2048, 1000) is None and TilePolicy.parse("auto").tile_size(2049, 10) == 1024
    from rfdeploy.core.contract import PreprocessContract

    cfg = FaceLogicConfig(detector_contract=PreprocessContract(), tile=" AUTO ")
    assert cfg.tile == TilePolicy("auto") and cfg.to_dict()["tile"] == "auto"
    assert FaceLogicConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ("12", "big", ""):
        with pytest.raises(ValueError):
            TilePolicy.parse(bad)


def test_a_models_tile_face_range_sets_the_plan():
    """DetectorConfig.tile_max_face / tile_min_face (measured per model) replace the largest
    anchor: smaller overlaps, fewer tiles; the range is validated where the config is made."""
    from rfdeploy.core.contract import PreprocessContract
    from rfdeploy.models.config import DetectorConfig
    from rfdeploy.runtime.logic_config import face_logic_config, largest_face

    contract = PreprocessContract()
    plain, ranged = DetectorConfig(), DetectorConfig(tile_max_face=192, tile_min_face=24)
    assert largest_face(plain) == round(128 * 2 * 2 ** 0.5) and largest_face(ranged) == 192
    by_anchor = face_logic_config(detector_contract=contract, detector_config=plain)
    chosen = face_logic_config(detector_contract=contract, detector_config=ranged)
    assert (by_anchor.tile_max_face, by_anchor.tile_min_face) == (362, 16)
    assert (chosen.tile_max_face, chosen.tile_min_face) == (192, 24)
    wide, narrow = plan_for(*UHD_8K, by_anchor), plan_for(*UHD_8K, chosen)
    assert {p.overlap for p in narrow.passes} == {192 + 2 * chosen.seam_margin}
    def pixels(plan):
        return sum(len(p.tiles) * p.tile_shape[0] * p.tile_shape[1] for p in plan.passes)

    assert pixels(narrow) < pixels(wide)  # smaller overlaps: fewer pixels through the detector
    # each pass covers sizes min..max at its scale: consecutive passes differ by at most 192 / 24
    scales = [p.scale_x for p in narrow.passes]
    assert all(a / b <= 192 / 24 + 1e-6 for a, b in zip(scales, scales[1:]))
    for bad in (dict(tile_max_face=100, tile_min_face=100), dict(tile_max_face=1), dict(tile_min_face=0)):
        with pytest.raises(ValueError, match="tile_min_face"):
            DetectorConfig(**bad)
    assert DetectorConfig.from_dict(ranged.to_dict()) == ranged


def test_any_shape_runners_tile_large_and_feed_a_pixel_budget_per_call():
    """Without an engine (onnxruntime, torch) `tile=auto` cuts the largest untiled input and a call
    holds at most HOST_BATCH_PIXELS; with an engine, its profile's 1024-px tiles in batches."""
    from rfdeploy.core.contract import PreprocessContract
    from rfdeploy.core.sizes import HOST_AUTO_TILE, HOST_BATCH_PIXELS
    from rfdeploy.engines.profiles import InputLimits
    from rfdeploy.models.config import DetectorConfig
    from rfdeploy.runtime.logic_config import face_logic_config

    contract, det = PreprocessContract(), DetectorConfig(tile_max_face=192, tile_min_face=24)
    host = face_logic_config(detector_contract=contract, detector_config=det)
    assert host.auto_tile == HOST_AUTO_TILE and host.max_batch == max(1, HOST_BATCH_PIXELS // HOST_AUTO_TILE ** 2)
    first = plan_for(*UHD_8K, host).passes[0]
    assert max(first.tile_shape) <= HOST_AUTO_TILE and len(first.tiles) == 15  # 5 x 3 fitted tiles
    fixed = face_logic_config(detector_contract=contract, detector_config=det, tile="1024")
    assert fixed.max_batch == HOST_BATCH_PIXELS // 1024 ** 2  # an asked-for tile size keeps the pixel budget
    limits = InputLimits(index=0, max_batch=8, min_size=(64, 64), max_size=(2048, 2048), max_tile=2048)
    engine = face_logic_config(detector_contract=contract, detector_config=det, detector_limits=limits)
    assert engine.auto_tile == 1024 and engine.max_batch == 8
    assert max(plan_for(*UHD_8K, engine).passes[0].tile_shape) <= 1024


def test_any_shape_runners_on_a_gpu_batch_1024px_tiles_as_asked():
    """The pixel budget per call is a CPU measure: a torch or onnxruntime network on a GPU gets
    the engines' 1024-px tiles and the tile batch asked for (else --tile-batch 8 ran one tile a call)."""
    from rfdeploy.core.contract import PreprocessContract
    from rfdeploy.models.config import DetectorConfig
    from rfdeploy.runtime.logic_config import face_logic_config

    contract, det = PreprocessContract(), DetectorConfig(tile_max_face=192, tile_min_face=24)
    gpu8 = face_logic_config(detector_contract=contract, detector_config=det, tile_batch=8, host_network=False)
    gpu1 = face_logic_config(detector_contract=contract, detector_config=det, tile_batch=1, host_network=False)
    assert gpu8.auto_tile == gpu1.auto_tile == 1024 and (gpu8.max_batch, gpu1.max_batch) == (8, 1)
    assert max(plan_for(*UHD_8K, gpu8).passes[0].tile_shape) <= 1024
    host8 = face_logic_config(detector_contract=contract, detector_config=det, tile_batch=8)
    assert host8.max_batch == 1  # the CPU's 2048-px tiles, one per call


def test_a_ranker_with_its_own_threshold_sets_the_output_threshold():
    """A calibrated ranker carries the threshold on its refined scores; it applies only when that
    ranker runs and no threshold was asked for."""
    from rfdeploy.core.contract import PreprocessContract
    from rfdeploy.models.config import DetectorConfig, ranker_config
    from rfdeploy.runtime.logic_config import face_logic_config

    contract = PreprocessContract()
    det = DetectorConfig(output_score_threshold=0.9)
    ranker_contract = PreprocessContract(resize="long_side", resize_to=320)
    own = ranker_config("crface_mnet025", output_score_threshold=0.55, contract=ranker_contract)
    plain = ranker_config("crface_mnet025", contract=ranker_contract)
    kw = dict(detector_contract=contract, detector_config=det, ranker_contract=ranker_contract)
    assert face_logic_config(**kw, ranker_boxes=1000, ranker_config=own).score_thr == 0.55
    assert face_logic_config(**kw, ranker_boxes=1000, ranker_config=plain).score_thr == 0.9
    assert face_logic_config(**kw, ranker_boxes=1000, ranker_config=own, score_thr=0.3).score_thr == 0.3
    assert face_logic_config(detector_contract=contract, detector_config=det, ranker_config=own).score_thr == 0.9
    with pytest.raises(ValueError, match="output_score_threshold"):
        ranker_config("crface_mnet025", output_score_threshold=1.0, contract=ranker_contract)


def test_a_ranker_gets_candidates_down_to_the_score_it_was_trained_on():
    """Ranker training keeps candidates down to the ranker config's candidate_score_threshold; the
    runtime hands it the same ones, while the detector alone keeps its own candidate threshold."""
    from rfdeploy.core.contract import PreprocessContract
    from rfdeploy.models.config import DetectorConfig, ranker_config
    from rfdeploy.runtime.logic_config import face_logic_config

    contract = PreprocessContract()
    det = DetectorConfig(score_threshold=0.05)
    ranker_contract = PreprocessContract(resize="long_side", resize_to=320)
    rk = ranker_config("crface_mnet025", contract=ranker_contract)
    assert rk.candidate_score_threshold == 0.01
    kw = dict(detector_contract=contract, detector_config=det, ranker_contract=ranker_contract)
    assert face_logic_config(**kw).candidate_thr == 0.05
    assert face_logic_config(**kw, ranker_boxes=1000, ranker_config=rk).candidate_thr == 0.01
    # a detector threshold already below the ranker's stays; an explicit one always wins
    low = DetectorConfig(score_threshold=0.005)
    assert face_logic_config(detector_contract=contract, detector_config=low, ranker_contract=ranker_contract,
                             ranker_boxes=1000, ranker_config=rk).candidate_thr == 0.005
    assert face_logic_config(**kw, ranker_boxes=1000, ranker_config=rk, candidate_thr=0.2).candidate_thr == 0.2
    with pytest.raises(ValueError, match="candidate_score_threshold"):
        ranker_config("crface_mnet025", candidate_score_threshold=0.0, contract=ranker_contract)
