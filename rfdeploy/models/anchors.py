"""Anchors and box coding for RefineFace.

Per pyramid level with stride S: anchors centred on ((x + 0.5) S, (y + 0.5) S), two sizes 2S and
2*sqrt(2)*S, one aspect ratio (height / width = 1.25). With S = 4..128 they cover 8-362 px.
Everything here is traceable to ONNX with dynamic feature sizes.
"""

from __future__ import annotations

import math

import torch


def anchor_shapes(stride: int, scales, ratio: float) -> list[tuple[float, float]]:
    """(width, height) of each anchor at a level; area = (scale * stride)^2, h / w = ratio."""
    out = []
    for s in scales:
        size = s * stride
        out.append((size / math.sqrt(ratio), size * math.sqrt(ratio)))
    return out


def level_anchors(feat_h, feat_w, stride: int, scales=None, ratio: float | None = None, device=None,
                  dtype=torch.float32, shapes: torch.Tensor | None = None):
    """Anchors [H*W*A, 4] as (cx, cy, w, h), ordered y, x, anchor — matching head outputs.

    ``shapes`` [A, 2] (w, h) already on the device avoids building them from host data."""
    if shapes is None:
        shapes = torch.tensor(anchor_shapes(stride, scales, ratio), dtype=dtype, device=device)  # A,2
    else:
        shapes = shapes.to(dtype)
    ys = (torch.arange(feat_h, device=device).to(dtype) + 0.5) * stride
    xs = (torch.arange(feat_w, device=device).to(dtype) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # HW,1,2
    num_a = shapes.shape[0]
    centres = centres.expand(-1, num_a, 2)
    wh = shapes.unsqueeze(0).expand(centres.shape[0], num_a, 2)
    return torch.cat([centres, wh], dim=-1).reshape(-1, 4)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]],
        dim=-1,
    )


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    half = b[..., 2:] / 2
    return torch.cat([b[..., :2] - half, b[..., :2] + half], dim=-1)


# exp() input is clamped so a wild regression cannot overflow (log(1000 / 16), as torchvision does)
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def decode(deltas: torch.Tensor, anchors: torch.Tensor, cvar: float, svar: float) -> torch.Tensor:
    """Deltas [..., 4] relative to anchors (cx, cy, w, h) -> boxes (cx, cy, w, h)."""
    cxcy = anchors[..., :2] + deltas[..., :2] * cvar * anchors[..., 2:]
    wh = anchors[..., 2:] * torch.exp((deltas[..., 2:] * svar).clamp(max=_MAX_LOG_SCALE))
    return torch.cat([cxcy, wh], dim=-1)


def encode(boxes_xyxy: torch.Tensor, anchors: torch.Tensor, cvar: float, svar: float) -> torch.Tensor:
    """Ground-truth boxes (x1, y1, x2, y2) -> regression targets relative to anchors (cx, cy, w, h)."""
    g = xyxy_to_cxcywh(boxes_xyxy)
    d_xy = (g[..., :2] - anchors[..., :2]) / (anchors[..., 2:] * cvar)
    d_wh = torch.log(g[..., 2:].clamp(min=1e-6) / anchors[..., 2:]) / svar
    return torch.cat([d_xy, d_wh], dim=-1)
