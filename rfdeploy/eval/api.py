"""What `rfdeploy eval` does: run any pipeline over an annotated set and report AP."""

from __future__ import annotations

from pathlib import Path

from rfdeploy.core.errors import InputError
from rfdeploy.core.image_io import load_image
from rfdeploy.eval.ap import DEFAULT_IOU_THRESHOLDS, evaluate_detections, load_annotations
from rfdeploy.eval.run import _finish, evaluate_prediction_file


def evaluate_pipeline(pipeline, gt_json, images_dir=None, plot_path=None, iou_thresholds=DEFAULT_IOU_THRESHOLDS) -> dict:
    """All detections down to the pipeline's threshold are kept, so the whole PR curve is measured."""

    gt_json = Path(gt_json)
    folder = Path(images_dir) if images_dir else gt_json.parent
    predictions = {}
    for g in load_annotations(gt_json):
        path = folder / g.file
        if not path.is_file():
            raise InputError(f"annotated image missing: {path}")
        predictions[g.file] = pipeline.detect(load_image(path).rgb)
    result = evaluate_detections(gt_json, predictions, iou_thresholds)
    return _finish(result, plot_path, "AP")


def evaluate_predictions(gt_json, predictions_file, plot_path=None, images_dir=None, allow_missing=False) -> dict:
    """AP of a results file (e.g. `rfdeploy infer --out`'s JSON lines); see evaluate_prediction_file."""

    return evaluate_prediction_file(gt_json, predictions_file, plot_path=plot_path, images_dir=images_dir,
                                    allow_missing=allow_missing)

