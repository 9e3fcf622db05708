"""Synthetic training scenes: real face crops pasted onto real face-free backgrounds.

Boxes are exact by construction. Design choices:

* Each crop is pasted with its margin (hair, ears, neck) under a soft elliptical alpha mask
  (opaque inside 1.2 face half-axes, smooth fade to zero at 1.55; shrunk on an axis where the crop
  is tighter), so no rectangle edge exists for the detector to learn.
* Crops are drawn with weight 1/sqrt(group size), so an identity with many frames (one person has
  11 crops) does not dominate.
* Face sizes: each scene draws a centre size log-uniformly in ``face_size`` (sqrt of the face box
  area, in scene pixels) and its faces scatter around it (log-normal). Scenes of small faces hold
  many faces, so small faces (8-32 px) dominate by count, as in WIDER FACE.
* Faces are painted far-to-near (small to large). Overlap: face-box IoU <= 0.3 and a later paste
  may cover at most 25% of an earlier face, except in "crowded" scenes (10%), where IoU <= 0.5 and
  covering is free; a face more than 60% covered (by later faces or by occluder patches cut from
  backgrounds) is kept but flagged ``ignore``.
* Rotation (+-20 deg): the returned box is the axis-aligned box of the rotated ellipse inscribed in
  the face box (half-extents sqrt(a^2 cos^2 + b^2 sin^2), sqrt(a^2 sin^2 + b^2 cos^2)). That keeps
  the WIDER convention (forehead-to-chin, ear-to-ear around the visible face) instead of the
  larger box of the rotated rectangle's corners; at 0 deg it equals the face box.
* Border: some faces straddle the image border. The box is clipped to the image; a face with less
  than 60% of its box inside is flagged ``ignore``; less than 35% inside is never placed.
* Splits: crops and backgrounds are split into train / holdout by hashing a group key (the source
  photo with frame numbers and variant suffixes removed, so near-duplicates share a split). Crops
  cut from the development evaluation photos (``dev_`` prefix, or a source that appears in the dev
  annotations) form their own "dev" group and are excluded from training by default.

Only Pillow and numpy are used; decoded crops and backgrounds are cached per process (lazily, so a
generator pickles small into DataLoader workers).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageFilter

from rfdeploy.core.errors import InputError
from rfdeploy.core.fsutil import atomic_dir
from rfdeploy.core.image_io import decode_image_bytes, load_image
from rfdeploy.train.augment import apply_colour, colour_matrix

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "holdout", "dev", "all")

# Alpha feather of a pasted crop, in units of the face box's half-axes (elliptical radius): enough
# for hair, ears and chin, little of the crop's own backdrop.
_R_IN, _R_OUT = 1.2, 1.55
# The radius used as "painted" when planning overlaps (middle of the fade).
_R_COVER = 1.35
# Occluder template: opaque inside radius 0.7, gone at 1.0; "covering" counted at 0.85.
_OCC_IN, _OCC_COVER = 0.7, 0.85
# Working resolutions (sqrt of face-box area, px) above which a face is rendered smaller and then
# enlarged: rotation and JPEG are the costly steps; blurred faces are rendered so that the blur is
# this many pixels at working size.
_ROTATE_MAX_FACE = 144.0
_JPEG_MAX_FACE = 192.0
_BLUR_WORK_SIGMA = 1.5


@dataclass(frozen=True)
class FaceCrop:
    file: str
    box: tuple[float, float, float, float]  # face box inside the crop, x1 y1 x2 y2
    source: str
    group: str
    dev: bool


@dataclass(frozen=True)
class Background:
    file: str
    source: str
    group: str


@dataclass(frozen=True)
class SynthOptions:
    """Probabilities and strengths of the per-face and per-scene variations."""

    p_flip: float = 0.5
    p_rotate: float = 0.5
    max_rotation: float = 20.0
    p_jitter: float = 0.8
    brightness: float = 0.3  # multiplicative, 1 +- this
    contrast: float = 0.3
    saturation: float = 0.4
    hue: float = 10.0  # degrees
    p_blur: float = 0.2
    p_jpeg: float = 0.15
    jpeg_quality: tuple[int, int] = (8, 40)
    p_motion_blur: float = 0.05
    p_occlude: float = 0.15
    p_gray_scene: float = 0.05
    p_crowded: float = 0.1
    p_border: float = 0.1
    size_spread: float = 0.35  # log-normal sigma of face sizes around the scene's centre size
    max_iou: float = 0.3
    crowded_max_iou: float = 0.5
    max_cover: float = 0.25
    ignore_occluded: float = 0.6
    min_visible: float = 0.6
    never_visible: float = 0.35
    p_bg_resize: float = 0.25
    place_attempts: int = 12

    def __post_init__(self):
        for name, v in self.__dict__.items():
            if name.startswith("p_") and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 <= self.max_rotation <= 90.0:
            raise ValueError("max_rotation must be in [0, 90] degrees")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("jpeg_quality must be 1 <= lo <= hi <= 100")
        if not 0.0 <= self.never_visible <= self.min_visible <= 1.0:
            raise ValueError("need 0 <= never_visible <= min_visible <= 1")
        if self.place_attempts < 1:
            raise ValueError("place_attempts must be >= 1")


class Scene(NamedTuple):
    image: Image.Image  # RGB
    boxes: np.ndarray  # [M,4] float32 x1 y1 x2 y2
    ignore: np.ndarray  # [M] bool
    blur: np.ndarray  # [M] uint8, WIDER levels: 0 clear, 1 normal, 2 heavy
    occlusion: np.ndarray  # [M] float32, fraction of the face box covered


# ---------------------------------------------------------------- index and splits


def group_key(text: str) -> str:
    """Near-duplicate group of a source path or file name (frames and variants of one photo)."""
    s = text.rsplit(":", 1)[-1].replace("\\", "/")
    m = re.search(r"([^/]+)/contents/", s)  # wallpaper packs: one folder, several resolutions
    if m:
        return m.group(1).lower()
    stem = PurePosixPath(s).stem.lower()
    base = re.sub(r"(_crop|_small|_modified|_original)", "", stem)
    base = re.sub(r"[\d_\-]+$", "", base)
    return base or stem


def holdout_groups(group_sizes: dict[str, int], fraction: float) -> set[str]:
    """Groups taken in order of their SHA-1 until they hold >= ``fraction`` of the items.

    Deterministic in the set of groups; at least one group is held out when fraction > 0 and
    there are two or more groups.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    total = sum(group_sizes.values())
    order = sorted(group_sizes, key=lambda g: hashlib.sha1(g.encode()).hexdigest())
    out: set[str] = set()
    held = 0
    for g in order[:-1]:  # never hold everything out
        if held >= fraction * total or fraction == 0.0:
            break
        out.add(g)
        held += group_sizes[g]
    return out


def _dev_sources(path: Path | None) -> set[str]:
    if path is None or not path.is_file():
        return set()
    try:
        data = json.loads(path.read_text())
        return {im["source"] for im in data.get("images", []) if "source" in im}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def load_crops(crops_dir: str | os.PathLike, dev_annotations: str | os.PathLike | None = None) -> list[FaceCrop]:
    """Read ``crops.json`` ({"crops": [{"file", "box", "source", ...}]}).

    ``dev_annotations`` (default: ``<crops_dir>/../realfaces/dev/annotations.json`` if present)
    lists the dev photos; a crop whose source is one of them is a dev crop even without the prefix.
    """
    d = Path(crops_dir)
    index = d / "crops.json"
    if not index.is_file():
        raise InputError(f"no crops.json in {d}", hint="the face-crop folder needs crops.json")
    try:
        entries = json.loads(index.read_text())["crops"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{index} is not a crops index ({e})") from e
    dev_path = Path(dev_annotations) if dev_annotations else d.parent / "realfaces" / "dev" / "annotations.json"
    dev_src = _dev_sources(dev_path)
    out = []
    for n, e in enumerate(entries):
        try:
            file, box = str(e["file"]), tuple(float(v) for v in e["box"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{index}: entry {n} needs 'file' and 'box' ({err})") from err
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"{index}: entry {n} ({file}) has a bad box {box}")
        if not (d / file).is_file():
            raise InputError(f"{index}: {file} is listed but missing")
        source = str(e.get("source", file))
        dev = file.startswith("dev_") or source in dev_src
        out.append(FaceCrop(file, box, source, "dev" if dev else group_key(source), dev))
    if not out:
        raise InputError(f"{index} lists no crops")
    return out


def load_backgrounds(backgrounds_dir: str | os.PathLike) -> list[Background]:
    """Read ``backgrounds.json`` ({"backgrounds": [{"file", "source"}]}) or list the image files."""
    d = Path(backgrounds_dir)
    index = d / "backgrounds.json"
    if index.is_file():
        try:
            entries = json.loads(index.read_text())["backgrounds"]
            items = [(str(e["file"]), str(e.get("source", e["file"]))) for e in entries]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{index} is not a backgrounds index ({e})") from e
    elif d.is_dir():
        items = [(p.name, p.name) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        raise InputError(f"background folder {d} does not exist")
    out = []
    for file, source in items:
        if not (d / file).is_file():
            raise InputError(f"background {file} is listed but missing in {d}")
        out.append(Background(file, source, group_key(source)))
    if not out:
        raise InputError(f"no background images in {d}")
    return out


def split_crops(crops: Sequence[FaceCrop], fraction: float = 0.15) -> dict[str, list[FaceCrop]]:
    """{"train", "holdout", "dev"}: dev crops apart, the others by hashed group."""
    plain = [c for c in crops if not c.dev]
    sizes: dict[str, int] = {}
    for c in plain:
        sizes[c.group] = sizes.get(c.group, 0) + 1
    held = holdout_groups(sizes, fraction)
    return {
        "train": [c for c in plain if c.group not in held],
        "holdout": [c for c in plain if c.group in held],
        "dev": [c for c in crops if c.dev],
    }


def split_backgrounds(bgs: Sequence[Background], fraction: float = 0.15) -> dict[str, list[Background]]:
    sizes: dict[str, int] = {}
    for b in bgs:
        sizes[b.group] = sizes.get(b.group, 0) + 1
    held = holdout_groups(sizes, fraction)
    return {
        "train": [b for b in bgs if b.group not in held],
        "holdout": [b for b in bgs if b.group in held],
    }


# ---------------------------------------------------------------- geometry helpers


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def crop_alpha(size: tuple[int, int], box: Sequence[float]) -> Image.Image:
    """Feathered elliptical mask ("L") centred on the face box.

    Opaque inside _R_IN face half-axes, zero from _R_OUT on; where the crop is too tight for that,
    the ellipse shrinks on that axis so it stays inside the crop (never a straight crop edge).
    """
    w, h = size
    x1, y1, x2, y2 = box
    cx, cy, a, b = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    ax = max(1.0, min(_R_OUT * a, cx, w - cx))
    ay = max(1.0, min(_R_OUT * b, cy, h - cy))
    xs = (np.arange(w, dtype=np.float32) + 0.5 - cx) / ax
    ys = (np.arange(h, dtype=np.float32) + 0.5 - cy) / ay
    rho = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)
    alpha = _smoothstep((1.0 - rho) / (1.0 - _R_IN / _R_OUT))
    return Image.fromarray((alpha * 255.0 + 0.5).astype(np.uint8), "L")


def _occluder_template(n: int = 64) -> Image.Image:
    c = (np.arange(n) + 0.5) / n * 2 - 1
    r = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    a = _smoothstep((1.0 - r) / (1.0 - _OCC_IN))
    return Image.fromarray((a * 255 + 0.5).astype(np.uint8), "L")


def rotated_ellipse_extent(a: float, b: float, angle_deg: float) -> tuple[float, float]:
    """Half width and half height of the axis-aligned box of an ellipse rotated by angle."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return math.sqrt((a * c) ** 2 + (b * s) ** 2), math.sqrt((a * s) ** 2 + (b * c) ** 2)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _visible_fractions(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], w) - np.maximum(boxes[:, 0], 0.0), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], h) - np.maximum(boxes[:, 1], 0.0), 0, None)
    return ix * iy / np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)


_GRID = (np.arange(6) + 0.5) / 6


def _ellipse_cover(boxes: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle_deg: float) -> np.ndarray:
    """Fraction of each box covered by a (rotated) ellipse, from a 6x6 grid of sample points."""
    if len(boxes) == 0:
        return np.zeros(0)
    px = boxes[:, 0:1, None] + _GRID[None, None, :] * (boxes[:, 2:3, None] - boxes[:, 0:1, None])
    py = boxes[:, 1:2, None] + _GRID[None, :, None] * (boxes[:, 3:4, None] - boxes[:, 1:2, None])
    dx, dy = px - cx, py - cy
    t = math.radians(angle_deg)
    # Into the ellipse's own frame (the paste was rotated by +angle counter-clockwise on screen).
    u = dx * math.cos(t) - dy * math.sin(t)
    v = dx * math.sin(t) + dy * math.cos(t)
    inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
    return inside.reshape(len(boxes), -1).mean(axis=1)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


# ---------------------------------------------------------------- generator


@dataclass
class _FacePlan:
    crop: int
    size: float  # sqrt of face box area, scene pixels
    flip: bool
    angle: float
    cx: float
    cy: float
    box: np.ndarray  # planned (approximate) box
    occluder: tuple[float, float, float, float] | None = None  # cx, cy, ax, ay


@dataclass
class _PreparedCrop:
    levels: list[tuple[float, Image.Image, Image.Image]]  # (scale, rgb, alpha): 1, 1/sqrt(2), ...
    box: tuple[float, float, float, float]
    size: tuple[int, int]


class SceneGenerator:
    """Composes face crops onto backgrounds; ``generate(i)`` is deterministic per (seed, i).

    ``out_size``: (W, H), or a range ((min_w, min_h), (max_w, max_h)) sampled uniformly.
    ``face_size``: range of sqrt(face box area) in pixels (capped so a face fits the scene).
    ``split``: "train" (default), "holdout" (unseen crops and backgrounds), "dev" (crops from the
    dev photos on holdout backgrounds) or "all". With ``exclude_dev_crops`` (default) dev crops
    never enter "train" or "all". ``exclude_crops``: crop file names to leave out everywhere
    (e.g. crops with drawn-on landmarks).
    """

    def __init__(
        self,
        crops_dir: str | os.PathLike,
        backgrounds_dir: str | os.PathLike,
        *,
        out_size=(1024, 1024),
        faces_per_image: tuple[int, int] = (1, 30),
        face_size: tuple[float, float] = (8, 1000),
        seed: int = 0,
        split: str = "train",
        exclude_dev_crops: bool = True,
        holdout_fraction: float = 0.15,
        options: SynthOptions | None = None,
        dev_annotations: str | os.PathLike | None = None,
        exclude_crops: Sequence[str] = (),
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.size_range = _parse_out_size(out_size)
        lo, hi = faces_per_image
        if not 0 <= lo <= hi:
            raise ValueError(f"faces_per_image must be 0 <= lo <= hi, got {faces_per_image}")
        if not 1.0 <= face_size[0] <= face_size[1]:
            raise ValueError(f"face_size must be 1 <= lo <= hi, got {face_size}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.faces_per_image = (int(lo), int(hi))
        self.face_size = (float(face_size[0]), float(face_size[1]))
        self.seed = int(seed)
        self.split = split
        self.exclude_dev_crops = exclude_dev_crops
        self.options = options or SynthOptions()
        self.crops_dir = Path(crops_dir)
        self.backgrounds_dir = Path(backgrounds_dir)

        drop = set(exclude_crops)
        all_crops = [c for c in load_crops(crops_dir, dev_annotations) if c.file not in drop]
        crop_splits = split_crops(all_crops, holdout_fraction)
        bg_splits = split_backgrounds(load_backgrounds(backgrounds_dir), holdout_fraction)
        self.crop_splits, self.background_splits = crop_splits, bg_splits
        dev = [] if exclude_dev_crops else crop_splits["dev"]
        if split == "train":
            self.crops, self.backgrounds = crop_splits["train"] + dev, bg_splits["train"]
        elif split == "holdout":
            self.crops, self.backgrounds = crop_splits["holdout"], bg_splits["holdout"]
        elif split == "dev":
            self.crops, self.backgrounds = crop_splits["dev"], bg_splits["holdout"]
        else:
            self.crops = crop_splits["train"] + crop_splits["holdout"] + dev
            self.backgrounds = bg_splits["train"] + bg_splits["holdout"]
        if not self.crops or not self.backgrounds:
            raise InputError(
                f"split {split!r} has {len(self.crops)} crops and {len(self.backgrounds)} backgrounds",
                hint="add data or choose another split",
            )
        sizes: dict[str, int] = {}
        for c in self.crops:
            sizes[c.group] = sizes.get(c.group, 0) + 1
        wts = np.array([1.0 / math.sqrt(sizes[c.group]) for c in self.crops])
        self._crop_cdf = np.cumsum(wts / wts.sum())
        self._crop_cache: dict[int, _PreparedCrop] = {}
        self._bg_cache: dict[int, list[Image.Image]] = {}
        self._occ_template = _occluder_template()

    # Caches are per process: a pickled generator (DataLoader workers) starts empty.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_crop_cache"], state["_bg_cache"] = {}, {}
        return state

    def __len__(self) -> int:  # not a dataset: any index works; this is the crop count
        return len(self.crops)

    # ------------------------------------------------------------ cached loading

    def _crop(self, k: int) -> _PreparedCrop:
        pc = self._crop_cache.get(k)
        if pc is None:
            c = self.crops[k]
            rgb = _load_rgb(self.crops_dir / c.file)
            w, h = rgb.size
            box = (max(c.box[0], 0.0), max(c.box[1], 0.0), min(c.box[2], w), min(c.box[3], h))
            alpha = crop_alpha((w, h), box)
            # Keep only the part the mask shows: less to resize, rotate and paste for every face.
            x0, y0, x1, y1 = alpha.getbbox() or (0, 0, w, h)
            rgb, alpha = rgb.crop((x0, y0, x1, y1)), alpha.crop((x0, y0, x1, y1))
            box = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
            w, h = rgb.size
            # Levels a factor sqrt(2) apart, each covering the full extent (sizes rounded), so a
            # face is resampled from at most 1.41x its size.
            levels = [(1.0, rgb, alpha)]
            s = 1.0
            while min(w, h) * s >= 24:
                s /= math.sqrt(2.0)
                size = (max(1, round(w * s)), max(1, round(h * s)))
                levels.append((s, rgb.resize(size, Image.BILINEAR), alpha.resize(size, Image.BILINEAR)))
            pc = self._crop_cache[k] = _PreparedCrop(levels, box, (w, h))
        return pc

    def _bg_levels(self, k: int) -> list[Image.Image]:
        lv = self._bg_cache.get(k)
        if lv is None:
            full = _load_rgb(self.backgrounds_dir / self.backgrounds[k].file)
            lv = [full]
            while min(lv[-1].size) >= 256:
                lv.append(lv[-1].reduce(2))
            self._bg_cache[k] = lv
        return lv

    # ------------------------------------------------------------ scene

    def generate(self, i: int) -> Scene:
        if i < 0:
            raise ValueError(f"scene index must be >= 0, got {i}")
        rng = np.random.default_rng([self.seed, int(i)])
        (w0, h0), (w1, h1) = self.size_range
        W, H = int(rng.integers(w0, w1 + 1)), int(rng.integers(h0, h1 + 1))
        scene = self._background(rng, W, H)
        plans, occ = self._plan(rng, W, H)
        boxes, ignore, blur, occlusion = [], [], [], []
        for n, p in enumerate(plans):
            box, level = self._paste(rng, scene, p)
            if p.occluder is not None:
                self._paste_occluder(rng, scene, p.occluder)
            boxes.append(box)
            blur.append(level)
        opt = self.options
        if rng.random() < opt.p_gray_scene:
            scene = scene.convert("L").convert("RGB")
        out_boxes = np.zeros((0, 4), np.float32)
        if boxes:
            b = np.asarray(boxes, np.float32)
            vis = _visible_fractions(b, W, H)
            b[:, 0::2] = b[:, 0::2].clip(0, W)
            b[:, 1::2] = b[:, 1::2].clip(0, H)
            out_boxes = b
            occlusion = np.asarray(occ, np.float32)
            ignore = (vis < opt.min_visible) | (occlusion > opt.ignore_occluded)
        return Scene(
            scene,
            out_boxes,
            np.asarray(ignore, bool).reshape(-1),
            np.asarray(blur, np.uint8).reshape(-1),
            np.asarray(occlusion, np.float32).reshape(-1),
        )

    def _background(self, rng: np.random.Generator, W: int, H: int) -> Image.Image:
        k = int(rng.integers(len(self.backgrounds)))
        levels = self._bg_levels(k)
        bw, bh = levels[0].size
        need = max(W / bw, H / bh)  # scale at which the background just covers the scene
        resize = need > 1.0 or rng.random() < self.options.p_bg_resize
        if resize:
            z = _log_uniform(rng, max(need, 0.25), max(need, 1.0) * 1.5)
            lvl = 0
            while lvl + 1 < len(levels) and 0.5 ** (lvl + 1) >= z:
                lvl += 1
            src = levels[lvl]
            zl = z / 0.5**lvl  # scale relative to this level
            rw, rh = min(W / zl, src.size[0]), min(H / zl, src.size[1])
            x0 = float(rng.uniform(0, src.size[0] - rw))
            y0 = float(rng.uniform(0, src.size[1] - rh))
            out = src.resize((W, H), Image.BILINEAR, box=(x0, y0, x0 + rw, y0 + rh))
        else:
            ok = [n for n in range(len(levels)) if levels[n].size[0] >= W and levels[n].size[1] >= H]
            src = levels[ok[int(rng.integers(len(ok)))]]
            x0 = int(rng.integers(0, src.size[0] - W + 1))
            y0 = int(rng.integers(0, src.size[1] - H + 1))
            out = src.crop((x0, y0, x0 + W, y0 + H))
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return out

    def _plan(self, rng: np.random.Generator, W: int, H: int) -> tuple[list[_FacePlan], list[float]]:
        opt = self.options
        n = int(rng.integers(self.faces_per_image[0], self.faces_per_image[1] + 1))
        crowded = rng.random() < opt.p_crowded
        max_iou = opt.crowded_max_iou if crowded else opt.max_iou
        # A face box is ~1.25x taller than wide: cap the size so a face fits the scene's height.
        s_max = max(self.face_size[0], min(self.face_size[1], 0.95 * min(W, H) / 1.12))
        s_centre = _log_uniform(rng, self.face_size[0], s_max)
        sizes = np.clip(s_centre * np.exp(rng.normal(0, opt.size_spread, n)), self.face_size[0], s_max)
        plans: list[_FacePlan] = []
        placed = np.zeros((0, 4), np.float64)
        occ: list[float] = []
        for s in np.sort(sizes):  # far (small) first, near (large) painted over them
            k = min(int(np.searchsorted(self._crop_cdf, rng.random(), side="right")), len(self.crops) - 1)
            c = self.crops[k]
            fw, fh = c.box[2] - c.box[0], c.box[3] - c.box[1]
            scale = float(s) / math.sqrt(fw * fh)
            a, b = fw * scale / 2, fh * scale / 2
            flip = rng.random() < opt.p_flip
            angle = float(rng.uniform(-opt.max_rotation, opt.max_rotation)) if rng.random() < opt.p_rotate else 0.0
            hx, hy = rotated_ellipse_extent(a, b, angle)
            border = rng.random() < opt.p_border
            # All candidate positions at once; the first one passing every check wins.
            K = opt.place_attempts
            if border:
                cxs = rng.uniform(-0.5 * hx, W + 0.5 * hx, K)
                cys = rng.uniform(-0.5 * hy, H + 0.5 * hy, K)
            else:
                cxs = rng.uniform(min(hx, W - hx), max(hx, W - hx), K)
                cys = rng.uniform(min(hy, H - hy), max(hy, H - hy), K)
            cand = np.stack([cxs - hx, cys - hy, cxs + hx, cys + hy], axis=1)
            ok = _visible_fractions(cand, W, H) >= opt.never_visible
            if len(placed):
                ok &= _iou_matrix(cand, placed).max(axis=1) <= max_iou
            if not ok.any():
                continue  # no room for this face
            if not crowded and len(placed):
                for j in np.flatnonzero(ok):
                    cover = _ellipse_cover(placed, cxs[j], cys[j], a * _R_COVER, b * _R_COVER, angle)
                    if cover.max() <= opt.max_cover:
                        break
                else:
                    continue
            else:
                j = int(np.flatnonzero(ok)[0])
                cover = _ellipse_cover(placed, cxs[j], cys[j], a * _R_COVER, b * _R_COVER, angle)
            cx, cy, box = float(cxs[j]), float(cys[j]), cand[j]
            occ = [1 - (1 - o) * (1 - cv) for o, cv in zip(occ, cover)]
            placed = np.vstack([placed, box[None]])
            occ.append(0.0)
            occluder = None
            if rng.random() < opt.p_occlude:
                occluder = _sample_occluder(rng, box)
                cov = _ellipse_cover(placed, occluder[0], occluder[1],
                                     occluder[2] * _OCC_COVER, occluder[3] * _OCC_COVER, 0.0)
                occ = [1 - (1 - o) * (1 - cv) for o, cv in zip(occ, cov)]
            plans.append(_FacePlan(k, float(s), flip, angle, cx, cy, box, occluder))
        return plans, occ

    def _paste(self, rng: np.random.Generator, scene: Image.Image, p: _FacePlan) -> tuple[np.ndarray, int]:
        """Render one face per its plan; returns its exact box and WIDER blur level.

        The face is first rendered at a working resolution (at most the crop's own, and lower
        when it is rotated, blurred or JPEG-degraded, whose results are smooth or blocky anyway),
        then enlarged to its scene size with one resize limited to the part inside the scene.
        This bounds the per-face cost of big faces.
        """
        opt = self.options
        pc = self._crop(p.crop)
        cw, ch = pc.size
        x1, y1, x2, y2 = pc.box
        native = math.sqrt((x2 - x1) * (y2 - y1))
        scale = p.size / native  # crop pixels -> scene pixels
        # All random draws first, in a fixed order.
        colour = None
        if rng.random() < opt.p_jitter:
            colour = colour_matrix(
                brightness=float(rng.uniform(1 - opt.brightness, 1 + opt.brightness)),
                contrast=float(rng.uniform(1 - opt.contrast, 1 + opt.contrast)),
                saturation=float(rng.uniform(1 - opt.saturation, 1 + opt.saturation)),
                hue=float(rng.uniform(-opt.hue, opt.hue)),
            )
        sigma, blur_level = 0.0, 0
        if rng.random() < opt.p_blur:
            rel = float(rng.uniform(0.01, 0.045))  # sigma relative to the face size
            sigma = max(0.6, rel * p.size)
            blur_level = 2 if rel > 0.025 else 1
        motion = int(rng.integers(4)) if rng.random() < opt.p_motion_blur else None
        if motion is not None:
            blur_level = max(blur_level, 1)
        quality = None
        if rng.random() < opt.p_jpeg:
            quality = int(rng.integers(opt.jpeg_quality[0], opt.jpeg_quality[1] + 1))

        work = min(scale, 1.0)
        if p.angle != 0.0:
            work = min(work, _ROTATE_MAX_FACE / native)
        if quality is not None:
            work = min(work, _JPEG_MAX_FACE / native)
        if sigma > _BLUR_WORK_SIGMA:
            work = min(work, scale * _BLUR_WORK_SIGMA / sigma)
        lvl = 0
        while lvl + 1 < len(pc.levels) and pc.levels[lvl + 1][0] >= work:
            lvl += 1
        _, rgb, alpha = pc.levels[lvl]
        ww, wh = max(1, round(cw * work)), max(1, round(ch * work))
        if rgb.size != (ww, wh):
            rgb = rgb.resize((ww, wh), Image.BILINEAR)
            alpha = alpha.resize((ww, wh), Image.BILINEAR)
        kx, ky = ww / cw, wh / ch  # actual working scale
        fx1, fy1, fx2, fy2 = x1 * kx, y1 * ky, x2 * kx, y2 * ky
        if p.flip:
            rgb, alpha = rgb.transpose(Image.FLIP_LEFT_RIGHT), alpha.transpose(Image.FLIP_LEFT_RIGHT)
            fx1, fx2 = ww - fx2, ww - fx1
        if colour is not None:
            rgb = apply_colour(rgb, colour)
        if sigma > 0.0:
            rgb = rgb.filter(ImageFilter.GaussianBlur(sigma * kx / scale))
        if motion is not None:
            rgb = rgb.filter(_MOTION_KERNELS[motion])
        if quality is not None:
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=quality)
            # decoded as every input is, so the artefacts are the ones a real JPEG input carries
            rgb = Image.fromarray(decode_image_bytes(buf.getvalue(), "a re-compressed face crop"))
        fcx, fcy = (fx1 + fx2) / 2, (fy1 + fy2) / 2
        a, b = (fx2 - fx1) / 2, (fy2 - fy1) / 2
        if p.angle != 0.0:
            rgb = rgb.rotate(p.angle, Image.BILINEAR, expand=True)
            alpha = alpha.rotate(p.angle, Image.BILINEAR, expand=True)
            # Pillow keeps the patch centre at the new centre and turns counter-clockwise on screen.
            t = math.radians(p.angle)
            dx, dy = fcx - ww / 2, fcy - wh / 2
            fcx = rgb.size[0] / 2 + dx * math.cos(t) + dy * math.sin(t)
            fcy = rgb.size[1] / 2 - dx * math.sin(t) + dy * math.cos(t)
        ux, uy = scale / kx, scale / ky  # working -> scene
        W, H = scene.size
        if abs(ux - 1.0) < 0.02 and abs(uy - 1.0) < 0.02:
            ux = uy = 1.0
            ox, oy = round(p.cx - fcx), round(p.cy - fcy)
            scene.paste(rgb, (ox, oy), alpha)
        else:
            pw, ph = rgb.size
            ox, oy = p.cx - fcx * ux, p.cy - fcy * uy  # float patch origin in the scene
            X0, Y0 = max(0, math.ceil(ox)), max(0, math.ceil(oy))
            X1, Y1 = min(W, math.floor(ox + pw * ux)), min(H, math.floor(oy + ph * uy))
            if X1 > X0 and Y1 > Y0:
                src = ((X0 - ox) / ux, (Y0 - oy) / uy, (X1 - ox) / ux, (Y1 - oy) / uy)
                src = (max(0.0, src[0]), max(0.0, src[1]), min(pw, src[2]), min(ph, src[3]))
                size = (X1 - X0, Y1 - Y0)
                scene.paste(
                    rgb.resize(size, Image.BILINEAR, box=src), (X0, Y0),
                    alpha.resize(size, Image.BILINEAR, box=src),
                )
        hx, hy = rotated_ellipse_extent(a * ux, b * uy, p.angle)
        cx, cy = ox + fcx * ux, oy + fcy * uy
        return np.array([cx - hx, cy - hy, cx + hx, cy + hy], np.float32), blur_level

    def _paste_occluder(self, rng: np.random.Generator, scene: Image.Image, occ: tuple[float, float, float, float]):
        """A soft elliptical patch cut from a random background (hands, objects, other heads)."""
        cx, cy, ax, ay = occ
        w, h = max(2, round(2 * ax)), max(2, round(2 * ay))
        src = self._bg_levels(int(rng.integers(len(self.backgrounds))))[0]
        sw, sh = src.size
        k = max(w / sw, h / sh, 1.0)
        rw, rh = w / k, h / k
        # max(0, .): rw can exceed sw by a rounding error when the patch spans the whole source
        x0, y0 = float(rng.uniform(0, max(0.0, sw - rw))), float(rng.uniform(0, max(0.0, sh - rh)))
        patch = src.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + rw, y0 + rh))
        mask = self._occ_template.resize((w, h), Image.BILINEAR)
        scene.paste(patch, (round(cx - w / 2), round(cy - h / 2)), mask)


def _sample_occluder(rng: np.random.Generator, box: np.ndarray) -> tuple[float, float, float, float]:
    """An ellipse entering the face from one side, covering roughly 15-80% of it."""
    x1, y1, x2, y2 = box
    fw, fh = x2 - x1, y2 - y1
    side = int(rng.integers(4))
    depth = float(rng.uniform(0.15, 0.8))  # how far into the face the occluder reaches
    if side < 2:  # from below (hand, scarf, object) or above (hat, hair, another head)
        ax, ay = fw * float(rng.uniform(0.5, 0.9)), fh * float(rng.uniform(0.4, 0.7))
        cx = (x1 + x2) / 2 + fw * float(rng.uniform(-0.3, 0.3))
        cy = (y2 + ay - depth * fh) if side == 0 else (y1 - ay + depth * fh)
    else:  # from the left or right
        ax, ay = fw * float(rng.uniform(0.4, 0.7)), fh * float(rng.uniform(0.5, 0.9))
        cy = (y1 + y2) / 2 + fh * float(rng.uniform(-0.3, 0.3))
        cx = (x2 + ax - depth * fw) if side == 2 else (x1 - ax + depth * fw)
    return float(cx), float(cy), float(ax), float(ay)


_MOTION_KERNELS: list[ImageFilter.Kernel] = []
for _d in range(4):  # horizontal, vertical, two diagonals; 5-tap lines
    _k = np.zeros((5, 5))
    for _t in range(5):
        _k[[(2, _t), (_t, 2), (_t, _t), (_t, 4 - _t)][_d]] = 1.0
    _MOTION_KERNELS.append(ImageFilter.Kernel((5, 5), _k.ravel().tolist(), scale=5))


def _load_rgb(path: Path) -> Image.Image:
    """A crop or background as a Pillow image, decoded as every input is (rfdeploy.core.image_io)."""
    return Image.fromarray(load_image(path).rgb)


def _parse_out_size(out_size) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        if len(out_size) == 2 and all(isinstance(v, (int, np.integer)) for v in out_size):
            lo = hi = (int(out_size[0]), int(out_size[1]))
        else:
            lo, hi = (tuple(int(v) for v in out_size[0]), tuple(int(v) for v in out_size[1]))
            if len(lo) != 2 or len(hi) != 2:
                raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"out_size must be (W, H) or ((min_w, min_h), (max_w, max_h)), got {out_size!r}") from None
    if not (16 <= lo[0] <= hi[0] and 16 <= lo[1] <= hi[1]):
        raise ValueError(f"out_size needs 16 <= min <= max on each axis, got {out_size!r}")
    return lo, hi


# ---------------------------------------------------------------- writing datasets


def _wider_occlusion(frac: float) -> int:
    # WIDER FACE: 0 none, 1 partial (1-30%), 2 heavy (> 30%).
    return 0 if frac < 0.01 else (1 if frac <= 0.3 else 2)


def _render_one(args) -> tuple[str, int, int, list[dict], list[str]]:
    generator, i, rel, path, quality = args
    scene = generator.generate(i)
    scene.image.save(path, "JPEG", quality=quality)
    faces, lines = [], []
    for b, ig, bl, oc in zip(scene.boxes, scene.ignore, scene.blur, scene.occlusion):
        faces.append({"box": [round(float(v), 2) for v in b], "ignore": bool(ig)})
        x, y = int(round(float(b[0]))), int(round(float(b[1])))
        w = max(1, int(round(float(b[2]))) - x)
        h = max(1, int(round(float(b[3]))) - y)
        lines.append(f"{x} {y} {w} {h} {int(bl)} 0 0 {int(ig)} {_wider_occlusion(float(oc))} 0")
    return rel, scene.image.size[0], scene.image.size[1], faces, lines


def write_wider(
    out_dir: str | os.PathLike,
    n: int,
    generator: SceneGenerator,
    *,
    start: int = 0,
    event: str = "0--Synthetic",
    gt_name: str = "wider_face_train_bbx_gt.txt",
    json_name: str = "annotations.json",
    quality: int = 95,
    workers: int = 1,
) -> Path:
    """Write scenes ``start .. start+n-1`` as a dataset in two formats at once:

    * WIDER FACE: ``images/<event>/synth_XXXXXXX.jpg`` and ``<gt_name>`` (per image: file name,
      face count, then ``x y w h blur expression illumination invalid occlusion pose`` lines,
      integer pixels; ignore -> invalid = 1; a 0-face image gets one all-zero line, as WIDER does);
    * the project's JSON (``<json_name>``, exact float boxes, "file" relative to ``out_dir``).

    The dataset is built in a temporary sibling folder and renamed into place at the end, so an
    interrupted run leaves no partial dataset. ``out_dir`` must not exist or be empty.
    Returns ``out_dir``.
    """
    out = Path(out_dir)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not re.fullmatch(r"[\w.\-]+", event):
        raise ValueError(f"event must be a plain folder name, got {event!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder", hint="choose a new output folder")
    with atomic_dir(out) as tmp:
        (tmp / "images" / event).mkdir(parents=True)
        jobs = []
        for i in range(start, start + n):
            rel = f"{event}/synth_{i:07d}.jpg"
            jobs.append((generator, i, rel, tmp / "images" / rel, quality))
        if workers > 1:
            from multiprocessing import get_context

            with get_context("spawn").Pool(workers) as pool:
                results = pool.map(_render_one, jobs, chunksize=8)
        else:
            results = [_render_one(j) for j in jobs]
        gt_lines, records = [], []
        for rel, w, h, faces, lines in results:
            gt_lines += [rel, str(len(lines))] + (lines or ["0 0 0 0 0 0 0 0 0 0"])
            records.append({"file": f"images/{rel}", "width": w, "height": h, "faces": faces})
        (tmp / gt_name).write_text("\n".join(gt_lines) + "\n")
        (tmp / json_name).write_text(json.dumps({"images": records}, indent=1))
    return out
