"""Calibration inputs: image files and frames of video files.

Images are decoded by the one image reader (rfdeploy.core.image_io: EXIF orientation,
transparency, bit depth), so calibration sees what inference sees. A video file (in a folder or
in a list) contributes ``video_frames`` frames evenly spaced over its length, decoded with PyAV
(the ``train`` extra) in increasing order, one at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import InputError
from rfdeploy.core.image_io import IMAGE_EXTENSIONS, load_image
from rfdeploy.core.video_io import VIDEO_SUFFIXES, frame_count, is_video_file, iter_frames, open_video
DEFAULT_VIDEO_FRAMES = 64


@dataclass(frozen=True, order=True)
class CalibSource:
    """One calibration picture: an image file, or frame ``frame`` of a video file."""

    path: Path
    frame: int | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name}#{self.frame}"

    @property
    def is_video(self) -> bool:
        return self.frame is not None


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array, exactly as the runtime does."""

    return load_image(path).rgb


class FrameReader:
    """Frames of one video by index, decoding forward (reopened only if an earlier frame is asked for)."""

    def __init__(self):
        self._path: Path | None = None
        self._container = None
        self._frames = None
        self._pos = -1

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._path, self._container, self._frames, self._pos = None, None, None, -1

    def get(self, path: Path, index: int) -> np.ndarray:
        if self._path != path or index <= self._pos:
            self.close()
            self._container = open_video(path)
            self._frames = iter_frames(path, self._container)
            self._path = path
        for pos, rgb in self._frames:
            self._pos = pos
            if pos == index:
                return rgb
        raise InputError(f"{path}: has no frame {index} (it ended after {self._pos + 1})")


def load_source(src: CalibSource, frames: FrameReader | None = None) -> np.ndarray:
    if not src.is_video:
        return load_rgb(src.path)
    reader = frames or FrameReader()
    try:
        return reader.get(src.path, src.frame)
    finally:
        if frames is None:
            reader.close()


def _expand(files: list[Path], video_frames: int) -> list[CalibSource]:
    out = []
    for p in files:
        if is_video_file(p):
            n = frame_count(p)
            k = min(video_frames, n)
            out += [CalibSource(p, int(i)) for i in dict.fromkeys(np.linspace(0, n - 1, k).round().astype(int))]
        else:
            out.append(CalibSource(p))
    return out


def list_sources(images: str | os.PathLike | list, video_frames: int = DEFAULT_VIDEO_FRAMES) -> list[CalibSource]:
    """A directory (its image and video files, sorted, not recursive), or a list of files and directories.

    Missing paths raise InputError; a directory without image or video files too.
    """
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise InputError("the list of calibration images is empty")
    suffixes = IMAGE_EXTENSIONS | VIDEO_SUFFIXES
    files: list[Path] = []
    missing = []
    for item in items:
        root = Path(item)
        if not root.exists():
            missing.append(str(root))
        elif root.is_dir():
            found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"no image or video files in {root}")
            files += found
        else:
            files.append(root)
    if missing:
        raise InputError(f"calibration image path(s) not found: {missing[:5]}")
    return _expand(files, video_frames)


def list_image_files(images: str | os.PathLike | list) -> list[Path]:
    """The files behind :func:`list_sources` (videos once each)."""
    return list(dict.fromkeys(s.path for s in list_sources(images, video_frames=1)))


def spread_order(n: int, k: int) -> list[int]:
    """Indices 0..n-1, starting with k evenly spaced ones (a sample over the whole sorted folder)."""
    if n <= 0:
        return []
    first = list(dict.fromkeys(int(round(v)) for v in np.linspace(0, n - 1, num=min(k, n))))
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]
