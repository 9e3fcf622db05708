"""benchmarks/ranker_headroom.py: the oracle re-ranking it reports is a ceiling, and it scores real candidates."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repo_scripts import ROOT, load_script  # noqa: E402

headroom = load_script("benchmarks/ranker_headroom.py")


def test_oracle_scores_are_best_iou_with_a_true_box():
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 40, 30], [100, 100, 110, 110]], np.float32)
    np.testing.assert_allclose(headroom.oracle_scores(boxes, gt), [1.0, 0.5, 0.5, 0.0])
    assert headroom.oracle_scores(boxes, np.zeros((0, 4), np.float32)).tolist() == [0, 0, 0, 0]
    # a face counts as found when some candidate reaches IoU 0.5 with it
    assert headroom.candidate_recall(boxes, gt) == 2
    assert headroom.candidate_recall(boxes[3:], gt) == 0


def test_oracle_reaches_full_ap_on_the_detectors_own_box_and_never_loses(tmp_path):
    """On the example photo with its one face annotated, the oracle's AP is 1 and not below the detector's."""
    from rfdeploy.core.examples import example_image
    from rfdeploy.core.image_io import load_image
    from rfdeploy.runtime.pipeline import FacePipeline

    src = example_image()
    rgb = load_image(src).rgb
    pipe = FacePipeline.create(use_ranker=False, score_thr=0.0)
    face = pipe.detect(rgb).boxes[0]
    # the true box a little off the detector's best, so some other candidate may fit it better
    gt_box = (face + np.array([-2, -3, 2, 3])).tolist()
    h, w = rgb.shape[:2]
    (tmp_path / src.name).write_bytes(Path(src).read_bytes())
    gt = tmp_path / "annotations.json"
    gt.write_text(json.dumps({"images": [{"file": src.name, "width": w, "height": h,
                                          "faces": [{"box": gt_box, "ignore": False}]}]}))
    r = headroom.headroom(pipe, gt, boxes_n=1000)
    assert r["faces"] == 1 and r["candidate_recall"] == 1.0
    assert r["oracle"] == [1.0, 1.0]
    assert all(o >= a for o, a in zip(r["oracle"], r["alone"]))
