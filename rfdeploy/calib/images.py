"""Calibration image discovery and loading.

``load_rgb`` is a stand-in until rfdeploy.runtime.image_io lands; it must decode exactly like the
runtime (EXIF orientation applied, converted to 8-bit RGB) so calibration sees what inference sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rfdeploy.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise InputError(f"image not found: {path}") from e
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise InputError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


def list_image_files(images: str | os.PathLike | list) -> list[Path]:
    """A directory (its image files, sorted, not recursive) or an explicit list of files.

    Missing paths raise InputError; a directory without image files too.
    """
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.exists():
            raise InputError(f"calibration image path not found: {root}")
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
            return files
        return [root]
    files = [Path(p) for p in images]
    if not files:
        raise InputError("the list of calibration images is empty")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InputError(f"calibration image(s) not found: {missing[:5]}")
    return files


def spread_order(n: int, k: int) -> list[int]:
    """Indices 0..n-1, starting with k evenly spaced ones (a sample over the whole sorted folder)."""
    if n <= 0:
        return []
    first = list(dict.fromkeys(int(round(v)) for v in np.linspace(0, n - 1, num=min(k, n))))
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]
