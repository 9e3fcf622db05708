"""Fixtures for the training-data tests: a tiny crop/background set made of flat colours, so the
tests run without the shared data and can find pasted faces by colour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shared_data import SHARED_DATA as _FOUND

SHARED = _FOUND or Path("/nonexistent-shared-data")
FACE_RGB = (255, 0, 255)  # the face ellipse inside each fixture crop
MARGIN_RGB = (0, 200, 0)  # hair/neck margin around it
BG_RGB = (90, 90, 90)


def _crop(w: int, h: int, box: tuple[float, float, float, float]) -> Image.Image:
    """Margin colour everywhere, the face colour on the ellipse inscribed in the face box."""
    x1, y1, x2, y2 = box
    cx, cy, a, b = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = MARGIN_RGB
    arr[inside] = FACE_RGB
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthdata")
    crops, bgs = root / "facecrops", root / "backgrounds"
    crops.mkdir()
    bgs.mkdir()
    entries = []
    for n, who in enumerate(["ada", "bo", "cy", "di", "ed", "flo", "gus", "hal"]):
        w, h = 160 + 8 * n, 200 + 6 * n
        box = (0.22 * w, 0.2 * h, 0.78 * w, 0.8 * h)
        name = f"{who}_0.png"
        _crop(w, h, box).save(crops / name)
        entries.append({"file": name, "box": list(box), "source": f"pkg:media/{who}.jpg"})
    # A crop cut from a dev photo: must never reach the train split by default.
    _crop(160, 200, (35, 40, 125, 160)).save(crops / "dev_photo_0.png")
    entries.append({"file": "dev_photo_0.png", "box": [35, 40, 125, 160], "source": "pkg:dev/photo.jpg"})
    (crops / "crops.json").write_text(json.dumps({"crops": entries}))
    rng = np.random.default_rng(0)
    bg_entries = []
    for n, wall in enumerate(["oak", "sky", "sea", "fog", "sand", "moss"]):
        arr = np.full((700 + 20 * n, 900, 3), BG_RGB, np.uint8)
        arr += rng.integers(0, 12, arr.shape, dtype=np.uint8)  # texture, never face-coloured
        name = f"{wall}.jpg"
        Image.fromarray(arr).save(bgs / name, quality=95)
        bg_entries.append({"file": name, "source": f"pkg:walls/{wall}.jpg"})
    (bgs / "backgrounds.json").write_text(json.dumps({"backgrounds": bg_entries}))
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "facecrops" / "crops.json").is_file() or not (SHARED / "backgrounds").is_dir():
        pytest.skip(f"{SHARED} (face crops and backgrounds) is not present on this machine")
    return SHARED
