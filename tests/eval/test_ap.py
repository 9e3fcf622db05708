import json

import numpy as np
import pytest

from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError
from rfdeploy.eval.ap import (
    GroundTruth,
    box_iou,
    evaluate,
    evaluate_detections,
    format_report,
    match_image,
    voc_ap,
)

FACE_A = [10, 10, 50, 60]
FACE_B = [100, 20, 140, 70]
FAR_AWAY = [300, 300, 340, 350]


def gt(boxes, ignore=None, file="a.jpg"):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool)
    return GroundTruth(file, 400, 400, boxes, ignore)


def ap50(truth, preds):
    return evaluate(truth, preds, [0.5])["ap"]["0.50"]


def test_box_iou_matches_hand_values():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0]])


def test_perfect_detections_give_ap_one_at_every_threshold():
    truth = [gt([FACE_A, FACE_B])]
    res = evaluate(truth, {"a.jpg": Detections([FACE_A, FACE_B], [0.9, 0.8])})
    assert set(res["ap"]) == {"0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80"}
    assert all(v == pytest.approx(1.0) for v in res["ap"].values())
    assert res["num_faces"] == 2 and res["num_detections"] == 2


def test_one_false_positive_at_the_top():
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> envelope 2/3 everywhere
    truth = [gt([FACE_A, FACE_B])]
    preds = {"a.jpg": Detections([FAR_AWAY, FACE_A, FACE_B], [0.95, 0.9, 0.8])}
    assert ap50(truth, preds) == pytest.approx(2 / 3)


def test_false_positive_at_the_bottom_does_not_lower_all_point_ap():
    truth = [gt([FACE_A, FACE_B])]
    preds = {"a.jpg": Detections([FACE_A, FACE_B, FAR_AWAY], [0.9, 0.8, 0.1])}
    assert ap50(truth, preds) == pytest.approx(1.0)


def test_duplicate_counts_as_false_positive():
    # A (TP), duplicate of A (FP), B (TP): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    truth = [gt([FACE_A, FACE_B])]
    dup = [11, 11, 51, 61]
    preds = {"a.jpg": Detections([FACE_A, dup, FACE_B], [0.9, 0.85, 0.8])}
    res = evaluate(truth, preds, [0.5])
    assert res["ap"]["0.50"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert (res["curves"]["0.50"]["tp"], res["curves"]["0.50"]["fp"]) == (2, 1)


def test_detection_on_ignored_face_is_neither_tp_nor_fp():
    truth = [gt([FACE_A, FACE_B], ignore=[False, True])]
    # top-scored detection sits on the ignored face: without the ignore rule it would cost precision
    preds = {"a.jpg": Detections([FACE_B, FACE_A, [101, 21, 141, 71]], [0.99, 0.9, 0.5])}
    res = evaluate(truth, preds, [0.5])
    assert res["ap"]["0.50"] == pytest.approx(1.0)
    assert res["num_faces"] == 1 and res["num_ignored_faces"] == 1
    assert res["curves"]["0.50"]["ignored"] == 2  # several detections may fall on one ignored face


def test_detection_prefers_a_free_face_over_an_ignored_one():
    # the detection overlaps the ignored face most but a real face well enough: it is a TP
    real, ignored = [0, 0, 100, 100], [10, 0, 110, 100]
    truth = [gt([real, ignored], ignore=[False, True])]
    labels = match_image(np.array([[8, 0, 108, 100]]), np.array([0.9]), truth[0], 0.5)
    assert labels.tolist() == [1]


def test_greedy_matching_takes_the_next_free_face():
    left, right = [0, 0, 100, 100], [30, 0, 130, 100]
    truth = gt([left, right])
    # both detections overlap `left` most; the second still reaches IoU >= 0.5 with `right`
    labels = match_image(np.array([[0, 0, 100, 100], [14, 0, 114, 100]]), np.array([0.9, 0.8]), truth, 0.5)
    assert labels.tolist() == [1, 1]


def test_localisation_threshold_matters():
    truth = [gt([[0, 0, 100, 100]])]
    shifted = [25, 0, 125, 100]  # IoU = 75 / 125 = 0.6
    res = evaluate(truth, {"a.jpg": Detections([shifted], [0.9])}, [0.5, 0.6, 0.65])
    assert res["ap"] == {"0.50": pytest.approx(1.0), "0.60": pytest.approx(1.0), "0.65": 0.0}


def test_missed_face_and_images_without_predictions():
    truth = [gt([FACE_A]), gt([FACE_B], file="b.jpg")]
    assert ap50(truth, {"a.jpg": Detections([FACE_A], [0.9])}) == pytest.approx(0.5)
    assert ap50(truth, {}) == 0.0


def test_detection_on_image_without_faces_is_a_false_positive():
    truth = [gt([FACE_A]), gt([], file="empty.jpg")]
    preds = {"a.jpg": Detections([FACE_A], [0.5]), "empty.jpg": Detections([FACE_A], [0.9])}
    assert ap50(truth, preds) == pytest.approx(0.5)


def test_voc_ap_hand_case():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 1 / 3)


def test_unknown_prediction_file_is_an_input_error():
    with pytest.raises(InputError, match="not in the annotations"):
        evaluate([gt([FACE_A])], {"other.jpg": Detections([FACE_A], [0.9])})


def test_evaluate_detections_reads_the_project_format(tmp_path):
    ann = {"images": [
        {"file": "a.jpg", "width": 400, "height": 400,
         "faces": [{"box": FACE_A, "ignore": False}, {"box": FACE_B, "ignore": True}]},
        {"file": "b.jpg", "width": 400, "height": 400, "faces": []},
    ]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(ann))
    res = evaluate_detections(path, {"a.jpg": Detections([FACE_A, FACE_B], [0.8, 0.9])}, [0.5, 0.75])
    assert res["ap"] == {"0.50": pytest.approx(1.0), "0.75": pytest.approx(1.0)}
    assert res["num_images"] == 2 and res["num_faces"] == 1 and res["num_ignored_faces"] == 1
    text = format_report(res)
    assert "| AP | 1.0000 | 1.0000 | 1.0000 |" in text


def test_bad_annotation_files_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        evaluate_detections(tmp_path / "missing.json", {})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"file": "a.jpg", "faces": [{"box": [10, 10, 5, 5]}]}]}))
    with pytest.raises(InputError, match="x2 < x1"):
        evaluate_detections(bad, {})
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        evaluate_detections(bad, {})
