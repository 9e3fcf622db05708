"""Every input the pipeline feeds a TensorRT detector lies inside the engine's profile: for each
shape preset of `build-engine --profile`, for the profile `build-engine` picks when none is given
(the runtime's default, rfdeploy.engines.default_profile), and for images that are tiny,
landscape, portrait or 8K and larger.

The runner below stands in for a TensorRT runner: the pipeline reads only its manifest's profiles
(nothing is executed), so these tests check the pipeline's own planning on the CPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import EngineMismatchError, InputError
from rfdeploy.engines.default_profile import detector_profile, ranker_profile
from rfdeploy.engines.profiles import (
    ProfileSpec,
    ShapeRange,
    input_limits,
    preset_names,
    preset_spec,
    resolve_profile,
    select_profile,
)
from rfdeploy.runtime.facelogic import detector_batches, detector_input_shapes, rank_candidates
from rfdeploy.runtime.pipeline import FacePipeline, PipelineOptions

CONTRACT = PreprocessContract()  # the detector's: fed at its own size, padded to 32
DECLARED = {"image": (-1, 3, -1, -1)}
SIZES = [(1, 1), (7, 5), (100, 60), (640, 480), (480, 640), (641, 481), (1280, 720), (720, 1280),
         (1920, 1080), (1080, 1920), (2048, 2048), (2049, 64), (64, 2049), (3840, 2160), (2160, 3840),
         (4100, 3000), (300, 5000), (7680, 4320), (4320, 7680), (15360, 8640)]


def _profiles() -> dict[str, list]:
    out = {name: [resolve_profile(preset_spec(name), DECLARED)] for name in preset_names()}
    out["default"] = [resolve_profile(detector_profile(CONTRACT), DECLARED)]
    out["vga+tile1024"] = out["vga"] + out["tile1024"]
    out["1080p+720p"] = out["1080p"] + out["720p"]
    return out


PROFILES = _profiles()


class _Detector:
    """A detector whose runner is an engine with these profiles (read, never run)."""

    cfg = None
    max_batch = None

    def __init__(self, profiles, contract=CONTRACT):
        self.contract = contract
        self.runner = SimpleNamespace(manifest=SimpleNamespace(profiles=tuple(profiles)))


def _pipeline(profiles, **options) -> FacePipeline:
    return FacePipeline(_Detector(profiles), options=PipelineOptions(**options))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_planned_input_fits_the_profile(name):
    profiles = PROFILES[name]
    cfg = _pipeline(profiles).logic_config()
    for w, h in SIZES:
        shapes = detector_input_shapes(w, h, cfg)
        assert shapes, (w, h)
        for s in shapes:
            # raises EngineMismatchError when a shape is outside every profile
            select_profile(profiles, {"image": s})


@pytest.mark.parametrize("name, size", [("vga", (480, 640)), ("vga", (1000, 700)), ("1080p", (1080, 1920)),
                                        ("default", (4100, 3000)), ("vga+tile1024", (3000, 2000))])
def test_planned_shapes_are_the_shapes_fed(name, size):
    """detector_input_shapes predicts what detector_batches really makes from pixels."""
    cfg = _pipeline(PROFILES[name]).logic_config()
    w, h = size
    fed = [tuple(batch.shape) for batch, _ in detector_batches(np.zeros((h, w, 3), np.uint8), cfg)]
    assert fed == detector_input_shapes(w, h, cfg)


def test_fixed_profiles_run_images_whole_when_they_fit_and_tile_otherwise():
    cfg = _pipeline(PROFILES["vga"]).logic_config()
    assert detector_input_shapes(640, 480, cfg) == [(1, 3, 480, 640)]  # a VGA frame: one call
    assert detector_input_shapes(200, 100, cfg) == [(1, 3, 480, 640)]  # padded up to the fixed size
    portrait = detector_input_shapes(480, 640, cfg)  # the wrong way round: tiles of 480, padded
    assert len(portrait) > 1 and set(portrait) == {(1, 3, 480, 640)}
    cfg = _pipeline(PROFILES["default"]).logic_config()
    assert detector_input_shapes(1080, 1920, cfg) == [(1, 3, 1920, 1088)]  # portrait HD, whole
    big = detector_input_shapes(7680, 4320, cfg)
    # 8K: tiles of at most the auto tile (1024), fitted to the image, in batches of up to 8
    assert big[0][0] == 8 and max(big[0][2:]) <= 1024 and max(s[0] for s in big) == 8


def test_tile_option_larger_than_the_engine_input_is_an_input_error():
    with pytest.raises(InputError, match="exceeds"):
        _pipeline(PROFILES["vga"], tile="1024").logic_config()
    assert _pipeline(PROFILES["vga"], tile="448").logic_config().tile == "448"


def test_profiles_without_a_batch_of_one_are_refused():
    only4 = resolve_profile(ProfileSpec(image=ShapeRange.fixed((4, 3, 640, 640))), DECLARED)
    with pytest.raises(EngineMismatchError, match="batch of one"):
        input_limits([only4], 32)


def test_input_limits_pick_one_profile_and_round_tiles_to_the_padding():
    lim = input_limits(PROFILES["vga+tile1024"], 32)
    assert (lim.index, lim.max_tile, lim.max_batch) == (1, 1024, 8)
    odd = resolve_profile(ProfileSpec(image=ShapeRange((1, 3, 64, 64), (1, 3, 500, 500), (2, 3, 500, 700))), DECLARED)
    lim = input_limits([odd], 32)
    assert (lim.max_tile, lim.max_size, lim.min_size, lim.max_batch) == (480, (700, 500), (64, 64), 2)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (2000, 40), (40, 2000), (5, 5)])
def test_ranker_input_fits_its_profile(size):
    """The ranker sees the whole image resized to its contract's long side, padded to its profile's
    minimum: a panorama's short side would otherwise fall below it."""
    rc = PreprocessContract(resize="long_side", resize_to=640)
    # the README's ranker profile, and the default one build-engine makes from the contract
    readme = resolve_profile(ProfileSpec(image=ShapeRange((1, 3, 64, 64), (1, 3, 640, 640), (1, 3, 1024, 1024)),
                                         named={"boxes": ShapeRange.fixed((1, 16, 5))}),
                             {"image": (-1, 3, -1, -1), "boxes": (-1, 16, 5)})
    default = resolve_profile(ranker_profile(rc, 16), {"image": (-1, 3, -1, -1), "boxes": (-1, 16, 5)})
    for prof in (readme, default):
        ranker = SimpleNamespace(contract=rc, num_boxes=16, cfg=None,
                                 runner=SimpleNamespace(manifest=SimpleNamespace(profiles=(prof,))))
        pipe = FacePipeline(_Detector(PROFILES["default"]), ranker=ranker)
        cfg = pipe.logic_config()
        seen = []

        def infer_ranker(image, boxes):
            seen.append({"image": image.shape, "boxes": boxes.shape})
            return np.zeros((1, 16), np.float32)

        w, h = size
        boxes = np.array([[0, 0, min(w, 4), min(h, 4)]], np.float32)
        rank_candidates(np.zeros((h, w, 3), np.uint8), boxes, np.array([0.9], np.float32), infer_ranker, cfg)
        (shapes,) = seen
        select_profile([prof], shapes)
