"""Video decoding, the one reader of video files (calibration frames, pseudo-labelling).

Frames are decoded with PyAV (the ``train`` extra) forward, one at a time, as HxWx3 uint8 RGB, the
layout :func:`rfdeploy.core.image_io.load_image` gives for pictures. Every failure (PyAV missing, a
file that is not a video, a decode error part-way) is an :class:`InputError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from rfdeploy.core.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def open_video(path: Path):
    """An open PyAV container with at least one video stream (close it, or use it in ``with``)."""
    try:
        import av
    except ImportError as e:
        raise InputError(f"{path}: reading video frames needs PyAV", hint='pip install "rfdeploy[train]"') from e
    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises its own error types per container problem
        raise InputError(f"{path}: not a readable video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
    return container


def iter_frames(path: Path, container=None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB) of every decoded frame of the first video stream, in order. ``container``: one
    already opened by :func:`open_video` (the caller closes it); else the file is opened and closed
    here."""
    own = container is None
    container = open_video(path) if own else container
    i = -1
    try:
        for i, frame in enumerate(container.decode(video=0)):
            yield i, frame.to_ndarray(format="rgb24")
    except InputError:
        raise
    except Exception as e:  # PyAV decode errors
        raise InputError(f"{path}: cannot decode frame {i + 1} ({type(e).__name__}: {e})") from e
    finally:
        if own:
            container.close()


def frame_count(path: Path) -> int:
    """Frames the decoder really gives (the count in a container's header can be larger)."""
    container = open_video(path)
    try:
        with container:
            n = sum(1 for _ in container.decode(video=0))
    except Exception as e:  # PyAV decode errors
        raise InputError(f"{path}: cannot decode the video ({type(e).__name__}: {e})") from e
    if n <= 0:
        raise InputError(f"{path}: the video has no frames")
    return n
