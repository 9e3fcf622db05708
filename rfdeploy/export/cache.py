"""Checkpoints exported to ONNX once, into a cache: the onnxruntime and TensorRT backends run
checkpoints through their ONNX export, and Triton's CPU repositories serve it.

The cache key is the checkpoint's sha256 and the rfdeploy version, so a changed file is never
served from a stale export. The exporter (and torch) is imported only when an export is made: a
checkpoint already in the cache runs without torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from rfdeploy import __version__
from rfdeploy.core.env import default_cache_dir, require_torch
from rfdeploy.core.errors import ModelFileError
from rfdeploy.core.fsutil import sha256_file
from rfdeploy.models import load


def cached_export_path(checkpoint: str | os.PathLike, cache_dir=None, sha256: str | None = None) -> Path:
    """Where :func:`cached_export` keeps a checkpoint's ONNX file (``cache_dir`` default:
    ``<default_cache_dir()>/onnx``)."""
    sha = sha256 or sha256_file(checkpoint)
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "onnx"
    return cache / f"{Path(checkpoint).stem}-{sha[:16]}-v{__version__}.onnx"


def cached_export(checkpoint: str | os.PathLike, cache_dir=None, notes: list[str] | None = None) -> Path:
    """The checkpoint's ONNX export, made once (with torch) and read from the cache afterwards."""
    checkpoint = Path(checkpoint)
    sha = sha256_file(checkpoint)
    out = cached_export_path(checkpoint, cache_dir, sha)
    if out.is_file():
        return out
    require_torch(f"exporting the checkpoint {checkpoint.name} to ONNX")
    from rfdeploy.export.onnx_export import export_model

    if notes is not None:
        notes.append(f"exported {checkpoint.name} to ONNX once: {out}")
    try:
        export_model(load(checkpoint), out, source_sha256=sha)
    except OSError as e:
        raise ModelFileError(f"cannot write the ONNX cache at {out.parent}: {e}",
                             hint="set RFDEPLOY_CACHE to a writable folder")
    return out
