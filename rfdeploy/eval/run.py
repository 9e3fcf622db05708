"""Evaluation entry points for the command line: files in, a result dict (and an optional plot) out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from rfdeploy.errors import InputError
from rfdeploy.eval.ap import DEFAULT_IOU_THRESHOLDS, evaluate_detections, format_report, load_annotations
from rfdeploy.runtime.detections import Detections


def load_predictions_json(path: str | os.PathLike) -> dict[str, Detections]:
    """Predictions as ``{file: [{"box": [x1,y1,x2,y2], "score": s}, ...]}`` or
    ``{"images": [{"file": f, "detections": [...]}]}`` (the shape ``Detections.to_json`` writes)."""
    from rfdeploy.fsutil import read_json

    path = Path(path)
    data = read_json(path, "predictions file")
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        try:
            data = {im["file"]: im.get("detections", []) for im in data["images"]}
        except (KeyError, TypeError) as e:
            raise InputError(f"{path}: every image needs a 'file' ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of file -> detections")
    out = {}
    for file, dets in data.items():
        try:
            boxes = np.asarray([d["box"] for d in dets], np.float32).reshape(-1, 4)
            scores = np.asarray([d["score"] for d in dets], np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: detections of {file!r} need 'box' [4 numbers] and 'score' ({e})") from e
        out[str(file)] = Detections(boxes, scores)
    return out


def evaluate_prediction_file(
    gt_json: str | os.PathLike,
    predictions_json: str | os.PathLike,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    plot_path: str | os.PathLike | None = None,
) -> dict:
    """AP of a predictions JSON against an annotations JSON; ``result["report"]`` is a Markdown table."""
    result = evaluate_detections(gt_json, load_predictions_json(predictions_json), iou_thresholds)
    return _finish(result, plot_path, "AP")


def evaluate_wider_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    iou_thresh: float = 0.5,
    plot_path: str | os.PathLike | None = None,
) -> dict:
    """WIDER FACE Easy/Medium/Hard AP of a result folder (official protocol)."""
    from rfdeploy.eval.wider import evaluate_wider

    result = evaluate_wider(pred_dir, gt_dir, iou_thresh=iou_thresh)
    result["report"] = "WIDER FACE val: " + ", ".join(f"{s} {result[s]:.4f}" for s in ("easy", "medium", "hard"))
    if result["missing"]:
        result["report"] += f" ({result['missing']} images had no result file)"
    if plot_path is not None:
        from rfdeploy.eval.plot import curves_from_result, save_pr_plot

        save_pr_plot(curves_from_result(result), plot_path, title="WIDER FACE val")
    return result


def evaluate_onnx_detector(
    onnx_path: str | os.PathLike,
    gt_json: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    adapter: str | None = None,
    long_side: int | None = None,
    nms_iou: float = 0.4,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    plot_path: str | os.PathLike | None = None,
) -> dict:
    """Run a third-party ONNX detector on every annotated image and report its AP.

    Images are read from ``images_dir`` (default: the annotation file's folder). All detections
    down to the adapter's candidate threshold are kept after NMS, so the whole PR curve is measured.
    """
    from PIL import Image, UnidentifiedImageError

    from rfdeploy.runtime.adapters import OnnxDetector

    gt_json = Path(gt_json)
    folder = Path(images_dir) if images_dir is not None else gt_json.parent
    options = {"long_side": long_side} if long_side is not None else {}
    detector = OnnxDetector(onnx_path, adapter=adapter, **options)
    predictions = {}
    for g in load_annotations(gt_json):
        try:
            with Image.open(folder / g.file) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
            raise InputError(f"cannot read annotated image {folder / g.file}: {e}") from e
        predictions[g.file] = detector.detect(rgb, nms_iou=nms_iou, score_thr=detector.adapter.score_threshold)
    result = evaluate_detections(gt_json, predictions, iou_thresholds)
    result["detector"] = detector.name
    return _finish(result, plot_path, f"{detector.name} AP")


def _finish(result: dict, plot_path, title: str) -> dict:
    result["report"] = format_report(result, title)
    if plot_path is not None:
        from rfdeploy.eval.plot import curves_from_result, save_pr_plot

        save_pr_plot(curves_from_result(result), plot_path, title=title)
    return result
