"""Precision-recall curves as PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rfdeploy.fsutil import atomic_path

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def render_pr_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "precision-recall",
    size: tuple[int, int] = (640, 520),
):
    """A PIL image of curves ``{label: (recall, precision)}``; the label may carry the AP."""
    from PIL import Image, ImageDraw

    width, height = size
    if width < 200 or height < 200:
        raise ValueError("the plot needs at least 200x200 pixels")
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 16, 32, height - 44

    def to_px(r: float, p: float) -> tuple[float, float]:
        return left + r * (right - left), bottom - p * (bottom - top)

    for k in range(11):  # grid and tick labels every 0.1
        v = k / 10
        x, _ = to_px(v, 0)
        _, y = to_px(0, v)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((x - 8, bottom + 4), f"{v:.1f}", fill="black")
        draw.text((left - 28, y - 6), f"{v:.1f}", fill="black")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2 - 18, bottom + 22), "recall", fill="black")
    draw.text((4, top - 24), "precision", fill="black")
    draw.text((left, 6), title, fill="black")

    for i, (label, (recall, precision)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        r = np.clip(np.asarray(recall, np.float64), 0, 1)
        p = np.clip(np.nan_to_num(np.asarray(precision, np.float64), nan=0.0), 0, 1)
        if len(r) != len(p):
            raise ValueError(f"curve {label!r}: {len(r)} recall values but {len(p)} precision values")
        points = [to_px(a, b) for a, b in zip(r.tolist(), p.tolist())]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        # legend in the lower left, where PR curves of useful detectors rarely pass
        lx, ly = left + 10, bottom - 16 * (len(curves) - i) - 4
        draw.line([(lx, ly + 6), (lx + 18, ly + 6)], fill=color, width=3)
        draw.text((lx + 24, ly), str(label), fill="black")
    return img


def save_pr_plot(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "precision-recall",
    size: tuple[int, int] = (640, 520),
) -> Path:
    """Write the plot as PNG; the file appears complete or not at all."""
    path = Path(path)
    img = render_pr_curves(curves, title, size)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def curves_from_result(result: dict, prefix: str = "") -> dict[str, tuple[list, list]]:
    """Curves of an ``evaluate_detections`` or ``evaluate_wider`` result, labelled with their AP."""
    out = {}
    if "ap" in result:
        for key, c in result["curves"].items():
            out[f"{prefix}IoU {key}: AP {result['ap'][key]:.3f}"] = (c["recall"], c["precision"])
    else:
        for key, c in result["curves"].items():
            out[f"{prefix}{key}: AP {result[key]:.3f}"] = (c["recall"], c["precision"])
    return out
