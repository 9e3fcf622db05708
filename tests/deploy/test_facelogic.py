"""The detector/tile/ranker glue with a real face detector (RetinaFace-MobileNet0.25, shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rfdeploy.core.boxes import box_iou
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.image_io import decode_image_bytes, load_image
from rfdeploy.runtime.facelogic import FaceLogicConfig, detect_faces, plan_for

ASTRONAUT = Path(__file__).resolve().parents[2] / "rfdeploy" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def retina(retina_onnx):
    from tests.deploy.retina import RetinaBatchDetector

    return RetinaBatchDetector(retina_onnx)


@pytest.fixture(scope="module")
def astronaut():
    return load_image(ASTRONAUT).rgb


def test_untiled_matches_the_detector_alone(retina, astronaut):
    cfg = FaceLogicConfig(detector_contract=retina.contract, tile="off")
    got = detect_faces(astronaut, retina, None, cfg)
    ref = retina.det.detect(astronaut, nms_iou=0.4, score_thr=0.5)
    assert len(got) == len(ref) == 1
    assert box_iou(got.boxes, ref.boxes)[0, 0] > 0.99
    assert abs(float(got.scores[0] - ref.scores[0])) < 1e-4


def test_tiled_large_image_finds_each_pasted_face_once(retina, astronaut):
    face = detect_faces(astronaut, retina, None, FaceLogicConfig(detector_contract=retina.contract, tile="off"))
    assert len(face) == 1
    canvas = np.full((1500, 2600, 3), 128, np.uint8)
    # Tile 1024 on a 2600-wide image: seams near x=788..1024 and 1576..1812; the first and third
    # copies straddle a seam (the face itself crosses one), the second lies inside a tile.
    offsets = [(850, 100), (150, 900), (1560, 700)]
    for x, y in offsets:
        canvas[y : y + 512, x : x + 512] = astronaut
    cfg = FaceLogicConfig(detector_contract=retina.contract, tile="auto", max_batch=3)
    plan = plan_for(2600, 1500, cfg)
    assert plan is not None and plan.tile == 1024 and plan.num_tiles > 1
    retina.calls.clear()
    got = detect_faces(canvas, retina, None, cfg)
    # Batched, never beyond max_batch, every tile once.
    assert max(retina.calls) <= 3 and sum(retina.calls) == plan.num_tiles
    expected = np.stack([face.boxes[0] + np.array([x, y, x, y], np.float32) for x, y in offsets])
    iou = box_iou(expected, got.boxes)
    assert len(got) == len(offsets), got.to_json()
    assert (iou.max(axis=1) > 0.8).all(), iou


def test_ranker_sees_top_n_and_rescored_boxes_survive(retina, astronaut):
    import torch

    from rfdeploy.models.config import ranker_config
    from rfdeploy.models.crface import CRFace

    rcfg = ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64)
    torch.manual_seed(0)
    ranker = CRFace(rcfg).eval()
    seen = {}

    def infer_ranker(image, boxes):
        seen["image"], seen["boxes"] = image.shape, boxes.copy()
        with torch.no_grad():
            return ranker(torch.from_numpy(image), torch.from_numpy(boxes)).numpy()

    base = dict(detector_contract=retina.contract, tile="off")
    plain = detect_faces(astronaut, retina, None, FaceLogicConfig(**base))
    cfg = FaceLogicConfig(**base, ranker_contract=rcfg.contract, ranker_boxes=64)
    ranked = detect_faces(astronaut, retina, infer_ranker, cfg)
    assert seen["boxes"].shape == (1, 64, 5)
    assert max(seen["image"][2:]) == rcfg.contract.resize_to  # whole image, long side resized
    # An untrained CRFace returns the detector's scores (zero-initialised output layer).
    assert len(ranked) == len(plain) == 1
    np.testing.assert_allclose(ranked.scores, ranked.detector_scores, atol=1e-6)
    np.testing.assert_allclose(ranked.boxes, plain.boxes, atol=1e-4)

    with pytest.raises(ModelFileError, match="ranker returned scores of shape"):
        detect_faces(astronaut, retina, lambda image, boxes: np.zeros((1, 10), np.float32), cfg)


def test_detector_output_shape_is_checked(astronaut):
    from rfdeploy.core.contract import PreprocessContract

    cfg = FaceLogicConfig(detector_contract=PreprocessContract(), tile="off")
    with pytest.raises(ModelFileError, match="boxes of shape"):
        detect_faces(astronaut, lambda b: (np.zeros((len(b), 4)), np.zeros((len(b),))), None, cfg)


def test_config_validation_and_round_trip(retina):
    with pytest.raises(ValueError):
        FaceLogicConfig(detector_contract=retina.contract, tile="12")
    with pytest.raises(ValueError):
        FaceLogicConfig(detector_contract=retina.contract, ranker_boxes=8)
    cfg = FaceLogicConfig(detector_contract=retina.contract, max_input=1024, tile="512")
    assert FaceLogicConfig.from_dict(cfg.to_dict()) == cfg


def test_decode_image_bytes(astronaut):
    rgb = decode_image_bytes(np.frombuffer(ASTRONAUT.read_bytes(), np.uint8))
    np.testing.assert_array_equal(rgb, astronaut)
    with pytest.raises(InputError, match="image payload") as e:
        decode_image_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    assert "rfdeploy-img-" not in str(e.value)
    with pytest.raises(InputError, match="empty"):
        decode_image_bytes(b"")
