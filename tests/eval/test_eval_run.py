import json

import numpy as np
import pytest
from PIL import Image

from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError
from rfdeploy.eval.run import evaluate_prediction_file, load_predictions_json


def write_annotations(folder):
    ann = {"images": [{"file": "a.jpg", "width": 200, "height": 200,
                       "faces": [{"box": [10, 10, 50, 60], "ignore": False}, {"box": [100, 20, 140, 70], "ignore": False}]}]}
    path = folder / "annotations.json"
    path.write_text(json.dumps(ann))
    return path


def test_prediction_file_round_trip_with_plot(tmp_path):
    gt = write_annotations(tmp_path)
    dets = Detections([[10, 10, 50, 60], [300, 300, 340, 350], [100, 20, 140, 70]], [0.9, 0.8, 0.7])
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"images": [{"file": "a.jpg", "detections": dets.to_json()}]}))
    res = evaluate_prediction_file(gt, preds, [0.5], plot_path=tmp_path / "pr.png")
    assert res["ap"]["0.50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert "| AP | 0.8333 |" in res["report"]
    assert Image.open(tmp_path / "pr.png").size == (640, 520)
    # the plain mapping form reads the same
    preds.write_text(json.dumps({"a.jpg": dets.to_json()}))
    loaded = load_predictions_json(preds)
    np.testing.assert_allclose(loaded["a.jpg"].boxes, dets.boxes)


def test_bad_prediction_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_predictions_json(tmp_path / "none.json")
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"a.jpg": [{"box": [1, 2, 3]}]}))
    with pytest.raises(InputError, match="need 'box'"):
        load_predictions_json(p)


def _two_image_set(tmp_path):
    ann = {"images": [
        {"file": "a.jpg", "width": 200, "height": 200, "faces": [{"box": [10, 10, 50, 60], "ignore": False}]},
        {"file": "sub/b.jpg", "width": 200, "height": 200, "faces": [{"box": [100, 20, 140, 70], "ignore": False}]},
    ]}
    (tmp_path / "set").mkdir()
    gt = tmp_path / "set" / "annotations.json"
    gt.write_text(json.dumps(ann))
    return gt


def _record(file, boxes_scores):
    faces = [{"box": b, "score": s, "detector_score": s} for b, s in boxes_scores]
    return {"file": str(file), "width": 200, "height": 200, "faces": faces, "timings_ms": {"detector": 1.0}}


def test_infer_json_lines_match_by_path_under_images_then_by_name(tmp_path):
    gt = _two_image_set(tmp_path)
    images = gt.parent
    preds = tmp_path / "results.jsonl"
    recs = [_record(images / "a.jpg", [([10, 10, 50, 60], 0.9)]),
            _record(images / "sub" / "b.jpg", [([100, 20, 140, 70], 0.8), ([0, 0, 5, 5], 0.95)]),
            _record(tmp_path / "elsewhere.jpg", [([1, 1, 9, 9], 0.5)])]
    preds.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = evaluate_prediction_file(gt, preds, [0.5])
    assert res["num_detections"] == 3 and res["unmatched"] == [str(tmp_path / "elsewhere.jpg")]
    assert res["ap"]["0.50"] == pytest.approx(2 / 3)  # FP 0.95, TP 0.9, TP 0.8: the envelope is 2/3
    assert "1 prediction(s) for images not in the annotations left out" in res["report"]
    # the same results written from another folder (relative paths elsewhere): matched by file name
    preds.write_text("".join(json.dumps({**r, "file": "copy/" + r["file"].rsplit("/", 1)[-1]}) + "\n" for r in recs[:2]))
    assert evaluate_prediction_file(gt, preds, [0.5])["ap"] == res["ap"]


def test_annotated_images_without_predictions_are_named(tmp_path):
    gt = _two_image_set(tmp_path)
    preds = tmp_path / "results.jsonl"
    err = {"file": str(gt.parent / "sub" / "b.jpg"), "error": "not an image", "error_type": "InputError", "exit_code": 2}
    preds.write_text(json.dumps(_record(gt.parent / "a.jpg", [([10, 10, 50, 60], 0.9)])) + "\n" + json.dumps(err) + "\n")
    with pytest.raises(InputError, match=r"1 of 2 annotated image\(s\) have no prediction .*sub/b.jpg \(its record is an error: not an image\)"):
        evaluate_prediction_file(gt, preds, [0.5])
    res = evaluate_prediction_file(gt, preds, [0.5], allow_missing=True)
    assert res["missing"] == ["sub/b.jpg"] and res["ap"]["0.50"] == pytest.approx(0.5)
    assert "counted as having no detections" in res["report"]


def test_broken_json_lines_say_which_line(tmp_path):
    gt = _two_image_set(tmp_path)
    preds = tmp_path / "results.jsonl"
    preds.write_text(json.dumps(_record("a.jpg", [])) + "\n{not json\n")
    with pytest.raises(InputError, match="line 2"):
        evaluate_prediction_file(gt, preds, [0.5])
    preds.write_text(json.dumps(_record("a.jpg", [])) + "\n" + json.dumps({"faces": []}) + "\n")
    with pytest.raises(InputError, match="line 2: expected a record with 'file'"):
        evaluate_prediction_file(gt, preds, [0.5])
