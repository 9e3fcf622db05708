import json

import numpy as np
import pytest
from PIL import Image

from rfdeploy.errors import InputError
from rfdeploy.eval.run import evaluate_prediction_file, load_predictions_json
from rfdeploy.runtime.detections import Detections


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
