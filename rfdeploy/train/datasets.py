"""Training data readers (WIDER FACE, the project's JSON) and torch datasets.

Every sample is (3xSxS float32 tensor normalised by a PreprocessContract through
``rfdeploy.core.preprocess``, {"boxes": [M,4] float32 x1y1x2y2, "ignore": [M] bool}).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError
from rfdeploy.core.image_io import load_image
from rfdeploy.core.preprocess import preprocess
from rfdeploy.train.augment import resize_long_side

# (image, boxes, ignore, rng) -> (HxWx3 uint8, boxes, ignore)
Transform = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class ImageRecord:
    path: Path
    boxes: np.ndarray  # [M,4] float32 x1 y1 x2 y2
    ignore: np.ndarray  # [M] bool
    width: int | None = None
    height: int | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.ignore = np.asarray(self.ignore, bool).reshape(-1)
        if len(self.ignore) != len(self.boxes):
            raise ValueError(f"{self.path}: {len(self.boxes)} boxes but {len(self.ignore)} ignore flags")


def read_wider(gt_file: str | os.PathLike, images_dir: str | os.PathLike, *, min_size: float = 0.0) -> list[ImageRecord]:
    """Parse a WIDER FACE ``wider_face_*_bbx_gt.txt``.

    Per image: the file name (relative to ``images_dir``), the face count, then one line per face:
    ``x y w h blur expression illumination invalid occlusion pose``. An image with 0 faces is
    followed by one all-zero line, which is skipped. ``invalid`` = 1 -> ignore; boxes with w or h
    <= 0 (a handful in WIDER train) are dropped; boxes smaller than ``min_size`` on a side are
    kept as ignore.
    """
    gt = Path(gt_file)
    root = Path(images_dir)
    try:
        lines = [ln.strip() for ln in gt.read_text().splitlines()]
    except OSError as e:
        raise InputError(f"cannot read WIDER annotation file {gt} ({e})") from e
    out: list[ImageRecord] = []
    i, n_lines = 0, len(lines)

    def bad(msg: str) -> InputError:
        return InputError(f"{gt}:{i + 1}: {msg}", hint="expected WIDER FACE bbx_gt format")

    while i < n_lines:
        name = lines[i]
        if not name:
            i += 1
            continue
        i += 1
        if i >= n_lines:
            raise bad(f"missing face count after {name!r}")
        try:
            count = int(lines[i])
        except ValueError:
            raise bad(f"expected a face count, got {lines[i]!r}") from None
        if count < 0:
            raise bad(f"negative face count {count}")
        i += 1
        boxes, ignore = [], []
        for _ in range(count):
            if i >= n_lines:
                raise bad(f"{name}: expected {count} face lines")
            try:
                vals = [float(v) for v in lines[i].split()]
            except ValueError:
                raise bad(f"not a face line: {lines[i]!r}") from None
            if len(vals) < 4:
                raise bad(f"face line needs at least x y w h: {lines[i]!r}")
            i += 1
            x, y, w, h = vals[:4]
            if w <= 0 or h <= 0:
                continue
            invalid = len(vals) >= 8 and vals[7] != 0
            boxes.append((x, y, x + w, y + h))
            ignore.append(bool(invalid or min(w, h) < min_size))
        if count == 0 and i < n_lines and _is_zero_line(lines[i]):
            i += 1
        out.append(ImageRecord(root / name, np.array(boxes, np.float32).reshape(-1, 4), np.array(ignore, bool)))
    return out


def _is_zero_line(line: str) -> bool:
    parts = line.split()
    if len(parts) < 4:
        return False
    try:
        return all(float(p) == 0 for p in parts)
    except ValueError:
        return False


def read_json_annotations(path: str | os.PathLike, images_root: str | os.PathLike | None = None) -> list[ImageRecord]:
    """Parse the project format ``{"images": [{"file", "width", "height", "faces": [{"box", "ignore"}]}]}``.

    ``file`` is relative to ``images_root`` (default: the JSON file's folder).
    """
    p = Path(path)
    root = Path(images_root) if images_root is not None else p.parent
    try:
        data = json.loads(p.read_text())
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{p} is not a project annotation file ({e})") from e
    out = []
    for n, im in enumerate(images):
        try:
            faces = im.get("faces", [])
            boxes = np.array([f["box"] for f in faces], np.float32).reshape(-1, 4)
            ignore = np.array([bool(f.get("ignore", False)) for f in faces], bool)
            rec = ImageRecord(root / im["file"], boxes, ignore, im.get("width"), im.get("height"))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{p}: image entry {n} is malformed ({e})") from e
        if len(rec.boxes) and ((rec.boxes[:, 2] <= rec.boxes[:, 0]) | (rec.boxes[:, 3] <= rec.boxes[:, 1])).any():
            raise InputError(f"{p}: image entry {n} ({im['file']}) has a box with x2<=x1 or y2<=y1")
        out.append(rec)
    return out


def read_annotations(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> list[ImageRecord]:
    """A ``.json`` file is the project format; anything else is a WIDER gt text file, whose images
    are under ``images_dir`` (default: ``<gt folder>/images``)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return read_json_annotations(p, images_dir)
    return read_wider(p, images_dir if images_dir is not None else p.parent / "images")


def to_sample(
    image: Image.Image | np.ndarray,
    boxes: np.ndarray,
    ignore: np.ndarray,
    *,
    contract: PreprocessContract,
    transform: Transform | None,
    size: int | None,
    rng: np.random.Generator,
):
    """Transform (or letterbox to ``size``) then normalise with the contract's preprocessing."""
    if transform is not None:
        arr, b, ig = transform(image, boxes, ignore, rng)
    elif size is not None:
        # padding is left to preprocess, whose padding is exactly zero after normalisation
        arr, b, ig = resize_long_side(image, boxes, ignore, size)
    else:
        arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        b, ig = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ignore, bool)
    pad_to = (size, size) if transform is None and size is not None else None
    x, lb = preprocess(np.ascontiguousarray(arr), contract, min_size=pad_to)
    b = b * np.float32(lb.scale)  # the contract may resize (ranker contracts: long side)
    target = {"boxes": torch.from_numpy(np.ascontiguousarray(b, np.float32)), "ignore": torch.from_numpy(ig.copy())}
    return torch.from_numpy(x[0]), target


def _check_size(size: int | None, contract: PreprocessContract) -> None:
    if size is not None and contract.resize == "none" and size % contract.pad_multiple:
        raise ValueError(
            f"size {size} is not a multiple of the contract's pad_multiple {contract.pad_multiple}: "
            f"the padded tensors would not be {size}x{size}"
        )


class _EpochMixin:
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New random augmentation (and, for synthetic data, new scenes) every epoch."""
        self.epoch = int(epoch)


class DetectionDataset(Dataset, _EpochMixin):
    """Images with boxes from ``read_wider`` / ``read_json_annotations``.

    ``transform``: e.g. ``RefineFaceAugment(size=640)``; None -> deterministic evaluation view:
    long side resized to ``size``, padded bottom/right to ``size`` x ``size`` by the contract. Per-item randomness comes from (seed, epoch, index), so workers agree.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        contract: PreprocessContract | None = None,
        transform: Transform | None = None,
        size: int | None = 640,
        seed: int = 0,
    ):
        if transform is None and size is None:
            raise ValueError("give a transform or a size (samples must share one shape to batch)")
        self.records = list(records)
        self.contract = contract or PreprocessContract()
        _check_size(size, self.contract)
        self.transform, self.size, self.seed = transform, size, int(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return to_sample(
            load_image(rec.path).rgb, rec.boxes, rec.ignore,
            contract=self.contract, transform=self.transform, size=self.size, rng=rng,
        )


class SyntheticDataset(Dataset, _EpochMixin):
    """``length`` scenes from a SceneGenerator, made on the fly (in DataLoader workers).

    Item i of epoch e is scene ``e * length + i``: every epoch sees new scenes, and the whole
    stream is reproducible. ``transform``/``size`` as in DetectionDataset; with neither, the
    generator's scenes are used as they are (give it a fixed ``out_size``).
    """

    def __init__(
        self,
        generator,
        length: int,
        *,
        contract: PreprocessContract | None = None,
        transform: Transform | None = None,
        size: int | None = None,
        seed: int = 0,
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        (w0, h0), (w1, h1) = generator.size_range
        if transform is None and size is None and (w0, h0) != (w1, h1):
            raise ValueError("scene sizes vary: give a transform or a size so samples share one shape")
        self.generator, self.length = generator, int(length)
        self.contract = contract or PreprocessContract()
        _check_size(size, self.contract)
        self.transform, self.size, self.seed = transform, size, int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        k = self.epoch * self.length + int(index)
        scene = self.generator.generate(k)
        rng = np.random.default_rng([self.seed, 1, k])
        return to_sample(
            scene.image, scene.boxes, scene.ignore,
            contract=self.contract, transform=self.transform, size=self.size, rng=rng,
        )


class MixedDataset(Dataset, _EpochMixin):
    """Several datasets as one, each repeated ``repeats`` times (to weight a small real set against
    a large synthetic one); ``set_epoch`` reaches every part, so each keeps its fresh augmentation."""

    def __init__(self, parts: Sequence[tuple[Dataset, int]]):
        if not parts:
            raise ValueError("MixedDataset needs at least one part")
        for ds, rep in parts:
            if rep < 1 or len(ds) < 1:
                raise ValueError(f"every part needs items and repeats >= 1 (got {len(ds)} items x {rep})")
        self.parts = [(ds, int(rep)) for ds, rep in parts]
        self._ends = np.cumsum([len(ds) * rep for ds, rep in self.parts])

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for ds, _ in self.parts:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self._ends, index, side="right"))
        start = 0 if k == 0 else int(self._ends[k - 1])
        ds, _ = self.parts[k]
        return ds[(index - start) % len(ds)]
