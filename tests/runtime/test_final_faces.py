"""The output threshold applied before NMS gives exactly the faces of NMS over every candidate."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rfdeploy.core.boxes import nms
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.detections import Detections
from rfdeploy.runtime.facelogic import FaceLogicConfig, final_faces


def _reference(boxes, scores, det_scores, cfg):
    keep = nms(boxes, scores, iou=cfg.nms_iou, max_det=cfg.max_det)
    return Detections(boxes[keep], scores[keep], None if det_scores is None else det_scores[keep]).filter(cfg.score_thr).sorted()


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), seed=st.integers(0, 2**31 - 1), thr=st.floats(0.0, 1.0),
       max_det=st.integers(1, 40), iou=st.floats(0.1, 0.9), ranked=st.booleans(), coarse=st.booleans())
def test_prefiltered_nms_equals_nms_then_threshold(n, seed, thr, max_det, iou, ranked, coarse):
    rng = np.random.default_rng(seed)
    # boxes crowded into a small field so that many overlap; coarse scores make ties
    xy = rng.uniform(0, 60, (n, 2)).astype(np.float32)
    wh = rng.uniform(5, 40, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if coarse:
        scores = np.round(scores * 4) / 4
    det_scores = rng.uniform(0, 1, n).astype(np.float32) if ranked else None
    cfg = FaceLogicConfig(detector_contract=PreprocessContract(), tile="off", score_thr=thr, nms_iou=iou,
                          max_det=max_det)
    got, want = final_faces(boxes, scores, det_scores, cfg), _reference(boxes, scores, det_scores, cfg)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)
    if ranked:
        np.testing.assert_array_equal(got.detector_scores, want.detector_scores)
    assert (got.scores >= thr).all()
