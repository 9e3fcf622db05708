"""Training-time augmentation: the RefineFace recipe (paper section 3.6) and helpers.

Recipe, in order: photometric distortions; expand by a random factor in [1, 2] with mean padding;
crop one of two square patches (side = the short side, or a random [0.5, 1.0] x short side);
random horizontal flip; resize to ``size`` x ``size``.

Expand, crop and resize are composed into one geometric mapping and rendered with a single
Pillow resize of the part of the source image that falls inside the patch, so the expanded canvas
(up to 4x the source pixels) is never materialised. Boxes go through the same mapping exactly.
Everything is numpy/Pillow and deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ImageNet mean in 0..255 (the default PreprocessContract's mean): padding with it gives zeros
# after normalisation, like the runtime's own padding.
MEAN_FILL = (124, 116, 104)

# RGB <-> YIQ: hue is a rotation and saturation a scaling of the (I, Q) chroma plane.
_RGB2YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def colour_matrix(
    *,
    brightness: float = 1.0,
    delta: float = 0.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
    pivot: float = 127.5,
) -> tuple[float, ...]:
    """One affine RGB->RGB map (Pillow's 12-tuple ``convert`` matrix) for all colour jitters.

    out = brightness * (contrast * (S_H(x) - pivot) + pivot) + delta, where S_H scales the chroma by
    ``saturation`` and rotates the hue by ``hue`` degrees. Composing them into one matrix means the
    image is touched (and clipped) once.
    """
    t = math.radians(hue)
    chroma = saturation * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    m = np.eye(3)
    m[1:, 1:] = chroma
    a = _YIQ2RGB @ m @ _RGB2YIQ
    a = brightness * contrast * a
    offset = brightness * (1.0 - contrast) * pivot + delta
    rows = [list(a[r]) + [offset] for r in range(3)]
    return tuple(float(v) for row in rows for v in row)


def apply_colour(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    """Apply a ``colour_matrix`` to an RGB image (Pillow clips to 0..255)."""
    return image.convert("RGB", matrix)


def random_photometric(
    rng: np.random.Generator,
    *,
    p: float = 0.5,
    brightness_delta: float = 32.0,
    contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5),
    hue: float = 18.0,
    grey: bool = False,
) -> tuple[float, ...] | None:
    """SSD-style photometric distortion: each component applied with probability ``p``.

    ``grey``: saturation 0 whatever was drawn (a black-and-white photo).
    Returns a colour matrix, or None when no component was drawn (the image stays untouched).
    """
    kw: dict[str, float] = {}
    if rng.random() < p:
        kw["delta"] = float(rng.uniform(-brightness_delta, brightness_delta))
    if rng.random() < p:
        kw["contrast"] = float(rng.uniform(*contrast))
    if rng.random() < p:
        kw["saturation"] = float(rng.uniform(*saturation))
    if rng.random() < p:
        kw["hue"] = float(rng.uniform(-hue, hue))
    if grey:
        kw["saturation"] = 0.0
    return colour_matrix(**kw) if kw else None


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array or a PIL image, got {arr.shape} {arr.dtype}")
    return Image.fromarray(arr)


def _as_boxes(boxes, ignore) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    ig = np.zeros(len(b), bool) if ignore is None else np.asarray(ignore, dtype=bool).reshape(-1)
    if len(ig) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(ig)} ignore flags")
    return b, ig


def render_patch(
    image: Image.Image,
    x0: float,
    y0: float,
    side_w: float,
    side_h: float,
    out_w: int,
    out_h: int,
    fill: tuple[int, int, int] = MEAN_FILL,
    colour: tuple[float, ...] | None = None,
) -> Image.Image:
    """Render the source region [x0, x0+side_w) x [y0, y0+side_h) (may extend past the image) onto
    an ``out_w`` x ``out_h`` canvas filled with ``fill``; exact geometry (float resize box)."""
    w, h = image.size
    kx, ky = out_w / side_w, out_h / side_h
    canvas = Image.new("RGB", (out_w, out_h), fill)
    # Destination pixels fully covered by the source image, then the exact source box for them.
    dx0 = max(0, math.ceil((0 - x0) * kx - 1e-6))
    dy0 = max(0, math.ceil((0 - y0) * ky - 1e-6))
    dx1 = min(out_w, math.floor((w - x0) * kx + 1e-6))
    dy1 = min(out_h, math.floor((h - y0) * ky + 1e-6))
    if dx1 <= dx0 or dy1 <= dy0:
        return canvas
    box = (
        min(w, max(0.0, x0 + dx0 / kx)),
        min(h, max(0.0, y0 + dy0 / ky)),
        min(w, max(0.0, x0 + dx1 / kx)),
        min(h, max(0.0, y0 + dy1 / ky)),
    )
    part = image.resize((dx1 - dx0, dy1 - dy0), Image.BILINEAR, box=box)
    if colour is not None:
        part = apply_colour(part, colour)
    canvas.paste(part, (dx0, dy0))
    return canvas


def map_boxes(
    boxes: np.ndarray, ignore: np.ndarray, x0: float, y0: float, kx: float, ky: float,
    out_w: int, out_h: int, min_box: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes into a patch at (x0, y0) scaled by (kx, ky): faces whose centre falls outside the patch
    are dropped, the rest clipped; boxes smaller than ``min_box`` on a side become ignore."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), ignore.reshape(0).astype(bool)
    b = (boxes - np.array([x0, y0, x0, y0], np.float32)) * np.array([kx, ky, kx, ky], np.float32)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    keep = (cx >= 0) & (cx < out_w) & (cy >= 0) & (cy < out_h)
    b, ig = b[keep], ignore[keep].copy()
    b[:, 0::2] = b[:, 0::2].clip(0, out_w)
    b[:, 1::2] = b[:, 1::2].clip(0, out_h)
    wh = b[:, 2:] - b[:, :2]
    ig |= (wh < min_box).any(axis=1)
    return b.astype(np.float32), ig


def hflip(image: Image.Image, boxes: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror an image and its x1,y1,x2,y2 boxes left-right."""
    w = image.size[0]
    out = boxes.copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image.transpose(Image.FLIP_LEFT_RIGHT), out


# Share of training samples shown in black and white (RefineFaceAugment.p_grey) by the training
# recipes: real photos include old and monochrome pictures that the colour training sets rarely show.
GREY_SHARE = 0.1


@dataclass(frozen=True)
class RefineFaceAugment:
    """The paper's training augmentation. Call with (image, boxes, ignore, rng).

    Returns (HxWx3 uint8 array of ``size`` x ``size``, boxes [M,4] float32, ignore [M] bool).
    Faces whose centre leaves the patch are dropped; faces under ``min_box`` px after the resize
    are kept as ignore (they are still in the pixels, so they must not count as background).
    When the image has non-ignored faces, up to ``crop_attempts`` patches are drawn until one holds
    a face centre (the recipe itself does not say; without it many samples would be empty).
    """

    size: int = 1024
    expand: tuple[float, float] = (1.0, 2.0)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    p_flip: float = 0.5
    photometric: bool = True
    # Not in the paper: a share of samples turned black-and-white, for old and monochrome photos
    # (the composed scenes and teacher-labelled sets are nearly all colour).
    p_grey: float = 0.0
    min_box: float = 2.0
    fill: tuple[int, int, int] = MEAN_FILL
    crop_attempts: int = 10

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if not 1.0 <= self.expand[0] <= self.expand[1]:
            raise ValueError(f"expand must be 1 <= lo <= hi, got {self.expand}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 <= self.p_flip <= 1.0:
            raise ValueError("p_flip must be in [0, 1]")
        if not 0.0 <= self.p_grey <= 1.0:
            raise ValueError("p_grey must be in [0, 1]")
        if self.crop_attempts < 1:
            raise ValueError("crop_attempts must be >= 1")

    def __call__(self, image, boxes, ignore, rng: np.random.Generator):
        img = _as_pil(image)
        b, ig = _as_boxes(boxes, ignore)
        w, h = img.size
        grey = self.p_grey > 0 and rng.random() < self.p_grey  # no draw at 0: old seeds keep their samples
        colour = random_photometric(rng, grey=grey) if self.photometric else None
        if grey and colour is None:
            colour = colour_matrix(saturation=0.0)

        r = float(rng.uniform(*self.expand))
        ew, eh = w * r, h * r
        ox, oy = float(rng.uniform(0, ew - w)), float(rng.uniform(0, eh - h))
        short = min(ew, eh)
        want_face = bool((~ig).any())
        for _ in range(self.crop_attempts):
            side = short if rng.random() < 0.5 else short * float(rng.uniform(*self.crop_scale))
            px, py = float(rng.uniform(0, ew - side)), float(rng.uniform(0, eh - side))
            x0, y0 = px - ox, py - oy  # patch origin in source-image pixels
            k = self.size / side
            nb, nig = map_boxes(b, ig, x0, y0, k, k, self.size, self.size, self.min_box)
            if not want_face or (~nig).any():
                break
        out = render_patch(img, x0, y0, side, side, self.size, self.size, self.fill, colour)
        if rng.random() < self.p_flip:
            out, nb = hflip(out, nb)
        return np.asarray(out), nb, nig


def resize_long_side(image, boxes, ignore, size: int, min_box: float = 2.0):
    """Resize so the long side is ``size`` (no padding); boxes follow, tiny ones become ignore."""
    img = _as_pil(image)
    b, ig = _as_boxes(boxes, ignore)
    w, h = img.size
    k = size / max(w, h)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    kx, ky = nw / w, nh / h
    nb = (b * np.array([kx, ky, kx, ky], np.float32)).astype(np.float32)
    if len(nb):
        ig = ig | ((nb[:, 2:] - nb[:, :2]) < min_box).any(axis=1)
    return np.asarray(img.resize((nw, nh), Image.BILINEAR)), nb, ig


def letterbox(image, boxes, ignore, size: int, fill: tuple[int, int, int] = MEAN_FILL):
    """Deterministic evaluation transform: long side resized to ``size``, padded bottom/right to
    ``size`` x ``size`` with ``fill``. Same return values as RefineFaceAugment."""
    arr, nb, ig = resize_long_side(image, boxes, ignore, size)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = fill
    canvas[: arr.shape[0], : arr.shape[1]] = arr
    return canvas, nb, ig


def collate_fn(batch):
    """Stack equally sized image tensors; targets stay a list (box counts differ per image)."""
    import torch

    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch]
