"""Average precision on this project's annotation format.

Annotations: ``{"images": [{"file", "width", "height", "faces": [{"box": [x1,y1,x2,y2],
"ignore": bool}]}]}``. Matching is greedy over all detections by descending score: a detection
takes the unmatched, non-ignored face it overlaps most (IoU >= threshold) and is a true positive;
otherwise, if it overlaps an ignored face that well, it is neither true nor false positive (several
detections may fall on one ignored face); otherwise it is a false positive, duplicates included.
AP is the VOC all-point interpolated area under the precision envelope.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from rfdeploy.core.errors import InputError
from rfdeploy.core.fsutil import read_json

# RefineFace Table 3 reports AP at these IoU thresholds.
DEFAULT_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


@dataclass(frozen=True)
class GroundTruth:
    """One image's faces: boxes [G,4] x1,y1,x2,y2 and a boolean ignore flag per face."""

    file: str
    width: int
    height: int
    boxes: np.ndarray
    ignore: np.ndarray


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [A,B] of x1,y1,x2,y2 boxes (continuous coordinates, no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def load_annotations(path: str | os.PathLike) -> list[GroundTruth]:
    return parse_annotations(read_json(path, "annotation file"), source=str(path))


def parse_annotations(data: dict, source: str = "annotations") -> list[GroundTruth]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{source}: expected an object with an 'images' list")
    out, seen = [], set()
    for k, im in enumerate(data["images"]):
        try:
            file = str(im["file"])
            faces = im.get("faces", [])
            boxes = np.asarray([f["box"] for f in faces], np.float64).reshape(-1, 4)
            ignore = np.asarray([bool(f.get("ignore", False)) for f in faces], bool)
            width, height = int(im.get("width", 0)), int(im.get("height", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{source}: image #{k} is malformed ({e})") from e
        if file in seen:
            raise InputError(f"{source}: image {file!r} is listed twice")
        if np.any(boxes[:, 2:] < boxes[:, :2]):
            raise InputError(f"{source}: {file!r} has a box with x2 < x1 or y2 < y1")
        seen.add(file)
        out.append(GroundTruth(file, width, height, boxes, ignore))
    return out


def match_image(
    det_boxes: np.ndarray, det_scores: np.ndarray, gt: GroundTruth, iou_threshold: float
) -> np.ndarray:
    """Label each detection of one image: 1 true positive, 0 false positive, -1 ignored.

    Detections are visited by descending score (stable for ties); labels follow the input order.
    """
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    labels = np.zeros(len(det_boxes), np.int8)
    if len(det_boxes) == 0 or len(gt.boxes) == 0:
        return labels
    iou = box_iou(det_boxes, gt.boxes)
    taken = np.zeros(len(gt.boxes), bool)
    for d in np.argsort(-np.asarray(det_scores), kind="stable"):
        free = np.where(~gt.ignore & ~taken & (iou[d] >= iou_threshold), iou[d], -1.0)
        best = int(np.argmax(free))
        if free[best] >= 0:
            taken[best] = True
            labels[d] = 1
        elif np.any(gt.ignore & (iou[d] >= iou_threshold)):
            labels[d] = -1
    return labels


def precision_recall(scores: np.ndarray, labels: np.ndarray, num_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative precision and recall over detections sorted by descending score (ignored dropped)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    counted = labels >= 0
    scores, labels = scores[counted], labels[counted]
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] == 0)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_positives if num_positives > 0 else np.zeros_like(tp, dtype=np.float64)
    return precision.astype(np.float64), recall.astype(np.float64)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP: area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _as_arrays(pred) -> tuple[np.ndarray, np.ndarray]:
    """Accept a Detections-like object (boxes, scores) or a (boxes, scores) pair."""
    if hasattr(pred, "boxes") and hasattr(pred, "scores"):
        boxes, scores = pred.boxes, pred.scores
    else:
        boxes, scores = pred
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise InputError(f"{len(boxes)} boxes but {len(scores)} scores")
    return boxes, scores


def evaluate(
    ground_truth: Sequence[GroundTruth],
    predictions: Mapping[str, object],
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict:
    """AP per IoU threshold. ``predictions`` maps an image file name to Detections (or a
    (boxes, scores) pair); images without an entry have no detections. Unknown files are an error.
    """
    known = {g.file for g in ground_truth}
    unknown = sorted(set(predictions) - known)
    if unknown:
        raise InputError(f"predictions for images not in the annotations: {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"IoU thresholds must be in (0, 1], got {thresholds}")
    preds = {g.file: _as_arrays(predictions[g.file]) if g.file in predictions else
             (np.zeros((0, 4)), np.zeros(0)) for g in ground_truth}
    num_pos = int(sum(int((~g.ignore).sum()) for g in ground_truth))
    all_scores = np.concatenate([preds[g.file][1] for g in ground_truth]) if ground_truth else np.zeros(0)

    ap, curves = {}, {}
    for t in thresholds:
        labels = np.concatenate(
            [match_image(*preds[g.file], g, t) for g in ground_truth]) if ground_truth else np.zeros(0, np.int8)
        precision, recall = precision_recall(all_scores, labels, num_pos)
        key = f"{t:.2f}"
        ap[key] = voc_ap(recall, precision) if num_pos > 0 else float("nan")
        curves[key] = {"precision": precision.tolist(), "recall": recall.tolist(),
                       "tp": int((labels == 1).sum()), "fp": int((labels == 0).sum()),
                       "ignored": int((labels == -1).sum())}
    return {
        "ap": ap,
        "mean_ap": float(np.mean(list(ap.values()))) if num_pos > 0 else float("nan"),
        "num_images": len(ground_truth),
        "num_faces": num_pos,
        "num_ignored_faces": int(sum(int(g.ignore.sum()) for g in ground_truth)),
        "num_detections": int(len(all_scores)),
        "curves": curves,
    }


def evaluate_detections(
    gt_json_path: str | os.PathLike,
    predictions: Mapping[str, object],
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict:
    """AP of ``predictions`` (file name -> Detections) against an annotations.json file.

    Returns ``{"ap": {"0.50": ...}, "mean_ap", "num_images", "num_faces", "num_ignored_faces",
    "num_detections", "curves": {"0.50": {"precision", "recall", "tp", "fp", "ignored"}}}``.
    """
    return evaluate(load_annotations(gt_json_path), predictions, iou_thresholds)


def format_report(result: dict, title: str = "AP") -> str:
    """A short Markdown table of AP per IoU threshold."""
    keys = list(result["ap"])
    lines = [
        f"{title}: {result['num_images']} images, {result['num_faces']} faces "
        f"({result['num_ignored_faces']} ignored), {result['num_detections']} detections",
        "",
        "| IoU | " + " | ".join(keys) + " | mean |",
        "|---" * (len(keys) + 2) + "|",
        "| AP | " + " | ".join(f"{result['ap'][k]:.4f}" for k in keys) + f" | {result['mean_ap']:.4f} |",
    ]
    return "\n".join(lines)
