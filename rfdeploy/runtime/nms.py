"""Non-maximum suppression and candidate merging over torchvision's ops.

NMS stays outside the exported engines (TensorRT cannot build ONNX NonMaxSuppression, CRFace needs
the candidates before NMS, and tiles need one global merge), so every backend ends here.
Functions accept numpy arrays or torch tensors and answer in the kind they were given.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _as_tensor(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x
    # A copy: numpy inputs may be read-only views, which torch.from_numpy warns about.
    return torch.tensor(np.asarray(x, dtype=np.float32))


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def nms(boxes, scores, iou: float = 0.4, max_det: int | None = None):
    """Indices of the boxes kept by greedy NMS, highest score first.

    ``boxes`` [N,4] x1,y1,x2,y2 and ``scores`` [N], numpy or torch (then any device);
    ``iou``: boxes overlapping a kept box by more than this are removed; ``max_det``: keep at
    most this many. Returns int64 indices of the same kind as ``boxes``.
    """
    import torch
    from torchvision.ops import nms as tv_nms

    if not (0.0 <= iou <= 1.0):
        raise ValueError(f"iou must be within [0, 1], got {iou}")
    if max_det is not None and max_det < 0:
        raise ValueError(f"max_det must be >= 0, got {max_det}")
    torch_in = _is_torch(boxes)
    b = _as_tensor(boxes).reshape(-1, 4).float()
    s = _as_tensor(scores).reshape(-1).to(device=b.device, dtype=b.dtype)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    keep = tv_nms(b, s, float(iou)) if len(b) else torch.zeros(0, dtype=torch.int64, device=b.device)
    if max_det is not None:
        keep = keep[:max_det]
    return keep if torch_in else keep.cpu().numpy().astype(np.int64)


def box_iou(boxes1, boxes2):
    """Pairwise IoU [N,M] of x1,y1,x2,y2 boxes; numpy in, numpy (float32) out; torch in, torch out."""
    from torchvision.ops import box_iou as tv_box_iou

    torch_in = _is_torch(boxes1)
    a = _as_tensor(boxes1).reshape(-1, 4).float()
    b = _as_tensor(boxes2).reshape(-1, 4).to(device=a.device, dtype=a.dtype)
    out = tv_box_iou(a, b)
    return out if torch_in else out.cpu().numpy()


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
