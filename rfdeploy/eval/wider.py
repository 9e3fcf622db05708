"""The WIDER FACE validation protocol (Easy / Medium / Hard AP), as the official evaluation does it.

Inputs are the official ground-truth files (``wider_face_val.mat`` with every face box, and
``wider_{easy,medium,hard}_val.mat`` whose ``gt_list`` names, per image, the 1-based indices of the
faces that count in that subset) and a result folder ``<event>/<image>.txt`` holding the image name,
a count, then ``x y w h score`` lines.

Steps, as in the official code:
- scores are normalised to 0..1 by the minimum and maximum over all images (starting from 0 and 1);
- per image, detections in descending score order take the face they overlap most (IoU with the
  "+1" pixel convention, boxes x,y,w,h -> x,y,x+w,y+h); at IoU >= 0.5 a face outside the subset's
  keep list makes the detection ignored, a kept face is recalled once (later hits are false);
- at 1000 score thresholds 1 - t/1000, each image adds (#counted proposals, #recalled faces) at its
  last detection above the threshold; images without faces or without detections add nothing, but
  their kept faces still count;
- precision = recalled / proposals, recall = recalled / kept faces, AP = VOC all-point AP.
MATLAB's ``max`` skips NaN, so a 0/0 precision at a threshold does not spread; ``np.fmax`` does the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfdeploy.core.env import optional_import
from rfdeploy.core.errors import InputError
from rfdeploy.core.fsutil import atomic_write_text

SUBSETS = ("easy", "medium", "hard")
THRESH_NUM = 1000


@dataclass(frozen=True)
class WiderGroundTruth:
    """Per event (in file order): image names, face boxes [F,4] x,y,w,h, and per subset the
    1-based kept face indices per image."""

    events: list[str]
    files: list[list[str]]
    boxes: list[list[np.ndarray]]
    keep: dict[str, list[list[np.ndarray]]]


def _cell_str(cell) -> str:
    """A MATLAB string stored in a cell, as scipy.io.loadmat returns it."""
    a = np.asarray(cell)
    while a.dtype == object and a.size == 1:
        a = np.asarray(a.reshape(-1)[0])
    return str(a.reshape(-1)[0]) if a.size else ""


def _cells(arr) -> list:
    """The elements of a MATLAB cell array (any of N x 1 / 1 x N), unwrapped one level."""
    return [np.asarray(c) for c in np.asarray(arr, dtype=object).reshape(-1)]


def load_wider_ground_truth(gt_dir: str | os.PathLike) -> WiderGroundTruth:
    sio = optional_import("scipy.io", "train")
    gt_dir = Path(gt_dir)

    def load(name: str) -> dict:
        path = gt_dir / name
        if not path.is_file():
            raise InputError(f"WIDER FACE ground truth file not found: {path}")
        try:
            return sio.loadmat(str(path))
        except Exception as e:  # scipy raises several kinds for damaged files
            raise InputError(f"cannot read {path}: {e}") from e

    full = load("wider_face_val.mat")
    try:
        events = [_cell_str(e) for e in _cells(full["event_list"])]
        files = [[_cell_str(f) for f in _cells(fl)] for fl in _cells(full["file_list"])]
        boxes = [
            [np.asarray(b, np.float64).reshape(-1, 4) for b in _cells(bl)]
            for bl in _cells(full["face_bbx_list"])
        ]
    except KeyError as e:
        raise InputError(f"wider_face_val.mat lacks {e}") from e
    keep = {}
    for subset in SUBSETS:
        mat = load(f"wider_{subset}_val.mat")
        if "gt_list" not in mat:
            raise InputError(f"wider_{subset}_val.mat lacks gt_list")
        keep[subset] = [
            [np.asarray(k, np.int64).reshape(-1) for k in _cells(kl)] for kl in _cells(mat["gt_list"])
        ]
        if [len(k) for k in keep[subset]] != [len(f) for f in files]:
            raise InputError(f"wider_{subset}_val.mat does not match wider_face_val.mat's image lists")
    if not (len(events) == len(files) == len(boxes)) or [len(b) for b in boxes] != [len(f) for f in files]:
        raise InputError("wider_face_val.mat: event, file and box lists differ in length")
    return WiderGroundTruth(events, files, boxes, keep)


def read_result_file(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """One result file -> (image name without folder and extension, [N,5] x,y,w,h,score).

    Rows are sorted by descending score, as the official reader does.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise InputError(f"{path}: expected an image name line and a count line")
    name = Path(lines[0].strip().replace("\\", "/")).stem
    try:
        count = int(float(lines[1].strip() or 0))
        rows = [[float(v) for v in line.split()[:5]] for line in lines[2:2 + count] if line.strip()]
    except ValueError as e:
        raise InputError(f"{path}: not a number ({e})") from e
    if len(rows) != count or any(len(r) != 5 for r in rows):
        raise InputError(f"{path}: the count line says {count} boxes of 'x y w h score', found {len(rows)}")
    dets = np.asarray(rows, np.float64).reshape(-1, 5)
    return name, _sorted_rows(dets)


def read_results(pred_dir: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """``{event: {image name: [N,5]}}`` from a folder of per-event folders of result files.

    Images are keyed by the result file's name, as the official MATLAB reader looks them up.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"result folder not found: {pred_dir}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        event = out.setdefault(event_dir.name, {})
        for f in sorted(event_dir.glob("*.txt")):
            event[f.stem] = read_result_file(f)[1]
    return out


def _sorted_rows(dets) -> np.ndarray:
    d = np.asarray(dets, np.float64).reshape(-1, 5)
    return d[np.argsort(-d[:, 4], kind="stable")]


def normalise_scores(results: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Scores -> (s - min) / (max - min) over all images, with max starting at 0 and min at 1."""
    hi, lo = 0.0, 1.0
    for event in results.values():
        for dets in event.values():
            if len(dets):
                hi, lo = max(hi, float(dets[:, 4].max())), min(lo, float(dets[:, 4].min()))
    span = hi - lo
    out = {}
    for ev, event in results.items():
        out[ev] = {}
        for name, dets in event.items():
            d = dets.copy()
            if len(d):
                d[:, 4] = (d[:, 4] - lo) / span if span > 0 else np.nan
            out[ev][name] = d
    return out


def overlaps_plus_one(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU [N,K] of x1,y1,x2,y2 boxes counting pixels inclusively (w = x2 - x1 + 1)."""
    b, q = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(query, np.float64).reshape(-1, 4)
    iw = np.minimum(b[:, None, 2], q[None, :, 2]) - np.maximum(b[:, None, 0], q[None, :, 0]) + 1
    ih = np.minimum(b[:, None, 3], q[None, :, 3]) - np.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = iw * ih
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    area_q = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    ov = inter / (area_b[:, None] + area_q[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), ov, 0.0)


def image_eval(dets: np.ndarray, gt_xywh: np.ndarray, kept: np.ndarray, iou_thresh: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per detection (descending score): faces recalled so far, and 1 = counted proposal, -1 = ignored."""
    pred = dets[:, :4].copy()
    pred[:, 2:] += pred[:, :2]
    gt = gt_xywh.astype(np.float64).copy()
    gt[:, 2:] += gt[:, :2]
    ov = overlaps_plus_one(pred, gt)
    recall = np.zeros(len(gt), np.int64)
    proposal = np.ones(len(pred), np.int64)
    pred_recall = np.zeros(len(pred), np.int64)
    for h in range(len(pred)):
        idx = int(np.argmax(ov[h]))
        if ov[h, idx] >= iou_thresh:
            if not kept[idx]:
                recall[idx] = -1
                proposal[h] = -1
            elif recall[idx] == 0:
                recall[idx] = 1
        pred_recall[h] = int((recall == 1).sum())
    return pred_recall, proposal


def image_pr_info(scores: np.ndarray, proposal: np.ndarray, pred_recall: np.ndarray,
                  thresh_num: int = THRESH_NUM) -> np.ndarray:
    """[thresh_num, 2]: (#counted proposals, #recalled faces) at the last detection >= 1 - t/n."""
    info = np.zeros((thresh_num, 2))
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        above = np.flatnonzero(scores >= thresh)
        if len(above):
            r = above[-1]
            info[t, 0] = int((proposal[: r + 1] == 1).sum())
            info[t, 1] = pred_recall[r]
    return info


def wider_voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = np.fmax(mpre[i - 1], mpre[i])
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_wider(
    results: str | os.PathLike | dict[str, dict[str, np.ndarray]],
    gt: str | os.PathLike | WiderGroundTruth,
    iou_thresh: float = 0.5,
    thresh_num: int = THRESH_NUM,
) -> dict:
    """Easy/Medium/Hard AP of a result folder (or ``{event: {image: [N,5]}}``) on the WIDER val set.

    Images without a result file count as having no detections (their faces still count); the
    number of such images is reported as ``missing``.
    """
    truth = gt if isinstance(gt, WiderGroundTruth) else load_wider_ground_truth(gt)
    raw = results if isinstance(results, dict) else read_results(results)
    raw = {ev: {name: _sorted_rows(d) for name, d in event.items()} for ev, event in raw.items()}
    preds = normalise_scores(raw)
    missing = sum(
        1 for ev, names in zip(truth.events, truth.files) for n in names if n not in preds.get(ev, {})
    )
    out: dict = {"iou_thresh": iou_thresh, "missing": missing, "curves": {}}
    for subset in SUBSETS:
        pr = np.zeros((thresh_num, 2))
        count_face = 0
        for e, event in enumerate(truth.events):
            for j, name in enumerate(truth.files[e]):
                keep_index = truth.keep[subset][e][j]
                count_face += len(keep_index)
                gt_boxes = truth.boxes[e][j]
                dets = preds.get(event, {}).get(name)
                if dets is None or len(gt_boxes) == 0 or len(dets) == 0:
                    continue
                kept = np.zeros(len(gt_boxes), bool)
                kept[keep_index - 1] = True
                pred_recall, proposal = image_eval(dets, gt_boxes, kept, iou_thresh)
                pr += image_pr_info(dets[:, 4], proposal, pred_recall, thresh_num)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = pr[:, 1] / pr[:, 0]
            recall = pr[:, 1] / count_face
        out[subset] = wider_voc_ap(recall, precision)
        out["curves"][subset] = {"precision": precision.tolist(), "recall": recall.tolist()}
    return out


def write_results(pred_dir: str | os.PathLike, event: str, image_name: str, boxes_xyxy: np.ndarray,
                  scores: np.ndarray) -> Path:
    """Write one image's detections in the WIDER result format (atomically)."""
    folder = Path(pred_dir) / event
    folder.mkdir(parents=True, exist_ok=True)
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    stem = Path(image_name).stem
    lines = [stem, str(len(boxes))]
    for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist()):
        lines.append(f"{x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f} {s:.4f}")
    target = folder / f"{stem}.txt"
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target
