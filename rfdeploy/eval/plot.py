"""Precision-recall curves as PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rfdeploy.core.fsutil import atomic_path

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


@dataclass(frozen=True)
class PlotLayout:
    """Where each part of the plot goes (x0, y0, x1, y1 pixel boxes): none of them overlap."""

    plot: tuple[int, int, int, int]  # the axes' frame
    title: tuple[int, int, int, int]
    xlabel: tuple[int, int, int, int]
    ylabel: tuple[int, int, int, int]  # the rotated "precision"
    font_size: int
    title_font_size: int  # smaller than font_size when a long title would not fit the width


def plot_layout(size: tuple[int, int], title: str) -> PlotLayout:
    """The layout :func:`render_pr_curves` draws: title centred above the axes, "recall" below the
    tick labels, "precision" turned upright left of them. Every text row is one line of the font
    (ascent + descent) high, so the boxes are what the glyphs can cover."""
    from PIL import ImageFont

    width, height = size
    fs = max(12, round(min(width, height) / 36))
    font = ImageFont.load_default(size=fs)
    ascent, descent = font.getmetrics()
    line = ascent + descent
    pad = max(4, fs // 2)
    tfs = fs
    while tfs > 8 and ImageFont.load_default(size=tfs).getlength(title) > width - 2 * pad:
        tfs -= 1
    tw = min(round(ImageFont.load_default(size=tfs).getlength(title)), width - 2 * pad)
    tick_w = round(font.getlength("0.0"))
    xw, yw = round(font.getlength("recall")), round(font.getlength("precision"))
    top = pad + line + pad
    left = pad + line + pad + tick_w + pad
    bottom = height - (pad + line + pad // 2 + line + pad // 2)
    right = width - (tick_w // 2 + pad)
    tx = max(pad, min((left + right) // 2 - tw // 2, width - tw - pad))
    xx, xy = (left + right) // 2 - xw // 2, height - pad - line
    yx, yy = pad, (top + bottom) // 2 - yw // 2
    return PlotLayout((left, top, right, bottom), (tx, pad, tx + tw, pad + line), (xx, xy, xx + xw, xy + line),
                      (yx, yy, yx + line, yy + yw), fs, tfs)


def render_pr_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "precision-recall",
    size: tuple[int, int] = (640, 520),
):
    """A PIL image of curves ``{label: (recall, precision)}``; the label may carry the AP."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    if width < 200 or height < 200:
        raise ValueError("the plot needs at least 200x200 pixels")
    lay = plot_layout(size, title)
    font = ImageFont.load_default(size=lay.font_size)
    small = ImageFont.load_default(size=max(10, lay.font_size - 2))
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = lay.plot
    tick_gap = max(2, lay.font_size // 4)

    def to_px(r: float, p: float) -> tuple[float, float]:
        return left + r * (right - left), bottom - p * (bottom - top)

    for k in range(11):  # grid and tick labels every 0.1
        v = k / 10
        x, _ = to_px(v, 0)
        _, y = to_px(0, v)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((x, bottom + tick_gap), f"{v:.1f}", fill="black", font=font, anchor="ma")
        draw.text((left - tick_gap, y), f"{v:.1f}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(lay.xlabel[:2], "recall", fill="black", font=font, anchor="lt")
    draw.text(lay.title[:2], title, fill="black", font=ImageFont.load_default(size=lay.title_font_size), anchor="lt")
    yh, yw = lay.ylabel[2] - lay.ylabel[0], lay.ylabel[3] - lay.ylabel[1]
    label = Image.new("RGB", (yw, yh), "white")
    ImageDraw.Draw(label).text((0, 0), "precision", fill="black", font=font, anchor="lt")
    img.paste(label.rotate(90, expand=True), lay.ylabel[:2])

    line_h = round(lay.font_size * 1.3)
    for i, (label_text, (recall, precision)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        r = np.clip(np.asarray(recall, np.float64), 0, 1)
        p = np.clip(np.nan_to_num(np.asarray(precision, np.float64), nan=0.0), 0, 1)
        if len(r) != len(p):
            raise ValueError(f"curve {label_text!r}: {len(r)} recall values but {len(p)} precision values")
        points = [to_px(a, b) for a, b in zip(r.tolist(), p.tolist())]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        # legend in the lower left, where PR curves of useful detectors rarely pass
        lx, ly = left + 10, bottom - line_h * (len(curves) - i) - 4
        draw.line([(lx, ly + line_h // 2), (lx + 18, ly + line_h // 2)], fill=color, width=3)
        draw.text((lx + 24, ly + line_h // 2), str(label_text), fill="black", font=small, anchor="lm")
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
