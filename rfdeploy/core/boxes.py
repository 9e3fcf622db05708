"""Non-maximum suppression, box IoU, candidate merging and packing for the ranker.

NMS stays outside the exported engines (TensorRT cannot build ONNX NonMaxSuppression, CRFace needs
the candidates before NMS, and tiles need one global merge), so every backend ends here.
Functions accept numpy arrays or torch tensors and answer in the kind they were given: numpy in
numpy (no torch needed, so the onnxruntime install stays torch-free), torch with torchvision's ops
(on the tensors' device). The numpy NMS does torchvision's float32 arithmetic step for step, so
both keep the same boxes (tests compare them).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _check(iou: float, max_det: int | None) -> None:
    if not (0.0 <= iou <= 1.0):
        raise ValueError(f"iou must be within [0, 1], got {iou}")
    if max_det is not None and max_det < 0:
        raise ValueError(f"max_det must be >= 0, got {max_det}")


def nms(boxes, scores, iou: float = 0.4, max_det: int | None = None):
    """Indices of the boxes kept by greedy NMS, highest score first.

    ``boxes`` [N,4] x1,y1,x2,y2 and ``scores`` [N], numpy or torch (then any device);
    ``iou``: boxes overlapping a kept box by more than this are removed; ``max_det``: keep at
    most this many. Returns int64 indices of the same kind as ``boxes``. Equal scores keep the
    lower index first.
    """
    _check(iou, max_det)
    if _is_torch(boxes):
        return _nms_torch(boxes, scores, iou, max_det)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    return _nms_numpy(b, s, float(iou), len(b) if max_det is None else max_det)


def _nms_numpy(b: np.ndarray, s: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    alive = np.argsort(-s, kind="stable")
    keep: list[int] = []
    zero = np.float32(0)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for empty boxes: NaN, never suppresses
        while alive.size and len(keep) < max_det:
            i, rest = alive[0], alive[1:]
            keep.append(int(i))
            w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            overlap = inter / ((areas[i] + areas[rest]) - inter)
            # compared in float64 as torchvision compares its float IoU with a double threshold
            alive = rest[~(overlap.astype(np.float64) > iou)]
    return np.asarray(keep, dtype=np.int64)


def _nms_torch(boxes, scores, iou: float, max_det: int | None):
    import torch
    from torchvision.ops import nms as tv_nms

    b = boxes.reshape(-1, 4).float()
    s = (scores if _is_torch(scores) else torch.tensor(np.asarray(scores, np.float32)))
    s = s.reshape(-1).to(device=b.device, dtype=b.dtype)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    keep = tv_nms(b, s, float(iou)) if len(b) else torch.zeros(0, dtype=torch.int64, device=b.device)
    return keep if max_det is None else keep[:max_det]


def box_iou(boxes1, boxes2):
    """Pairwise IoU [N,M] of x1,y1,x2,y2 boxes; numpy in, numpy (float32) out; torch in, torch out
    (torchvision's box_iou; the numpy path is the same float32 arithmetic)."""
    if _is_torch(boxes1):
        import torch
        from torchvision.ops import box_iou as tv_box_iou

        a = boxes1.reshape(-1, 4).float()
        b = boxes2 if _is_torch(boxes2) else torch.tensor(np.asarray(boxes2, np.float32))
        return tv_box_iou(a, b.reshape(-1, 4).to(device=a.device, dtype=a.dtype))
    a = np.asarray(boxes1, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float32).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]),
                    np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / ((area_a[:, None] + area_b[None, :]) - inter)


def merge_candidates(parts: Iterable[Sequence]) -> tuple:
    """Concatenate per-tile/per-pass candidates: ``[(boxes, scores, *extra), ...]`` -> one tuple.

    Every part must have the same number of arrays (e.g. boxes, scores, landmarks), all numpy or
    all torch. With no parts the result is ``(zeros[0,4], zeros[0])`` in numpy.
    """
    parts = [tuple(p) for p in parts]
    if not parts:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    n = len(parts[0])
    if n < 2 or any(len(p) != n for p in parts):
        raise ValueError("every part needs the same number of arrays, boxes and scores first")
    for i, p in enumerate(parts):
        if len(p[0]) != len(p[1]):
            raise ValueError(f"part {i}: {len(p[0])} boxes but {len(p[1])} scores")
    if _is_torch(parts[0][0]):
        import torch

        return tuple(torch.cat([p[k] for p in parts]) for k in range(n))
    return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(n))


def merge_and_nms(parts: Iterable[Sequence], iou: float = 0.4, max_det: int | None = None) -> tuple:
    """:func:`merge_candidates` then :func:`nms`: the kept rows of every array, best score first."""
    merged = merge_candidates(parts)
    keep = nms(merged[0], merged[1], iou=iou, max_det=max_det)
    return tuple(a[keep] for a in merged)


def pack_candidates(boxes_xyxy, scores, image_w: int, image_h: int, n: int):
    """Detector candidates -> the ranker's N x 5 input (x, y, w, h normalised, score).

    Sorted by score descending, cut or zero-padded to N. Returns (matrix [N,5] float32, order)
    where ``order`` maps matrix rows back to the input candidates (first ``len(order)`` rows).
    Numpy only: the same function feeds training, calibration and every runtime backend.
    """
    boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:n]
    order = order[scores[order] > 0]  # zero-score rows mean "no candidate" to the ranker
    b = boxes_xyxy[order]
    out = np.zeros((n, 5), np.float32)
    out[: len(order), 0] = b[:, 0] / image_w
    out[: len(order), 1] = b[:, 1] / image_h
    out[: len(order), 2] = (b[:, 2] - b[:, 0]) / image_w
    out[: len(order), 3] = (b[:, 3] - b[:, 1]) / image_h
    out[: len(order), 4] = scores[order]
    return out, order
