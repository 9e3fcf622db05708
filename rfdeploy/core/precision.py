"""A model's precision variants: the fp16 and int8 ONNX files made from an fp32 export, where they
live and when one can be reused. rfdeploy.export (``export --fp16``), rfdeploy.engines
(``build-engine --fp16/--int8`` and the engine cache) and users' scripts name them here; the
precision a file really has is in its metadata (``rfdeploy.precision``) and its graph
(rfdeploy.core.onnxinfo.detect_precision).
"""

from __future__ import annotations

import os
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def variant_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    """``<name>.fp16.onnx`` / ``<name>.int8.onnx`` beside ``<name>.onnx``; fp32 is the file itself."""
    _check(precision)
    src = Path(onnx_path)
    return src if precision == "fp32" else src.with_suffix(f".{precision}.onnx")


def fresh_variant(onnx_path: str | os.PathLike, precision: str) -> Path | None:
    """The variant beside ``onnx_path`` when it exists and is not older than its source (a newer
    export makes it stale), else None."""
    src, dst = Path(onnx_path), variant_path(onnx_path, precision)
    if dst == src:
        return src if src.is_file() else None
    if dst.is_file() and src.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    return None


def cached_variant_name(stem: str, source_sha256: str, version: str, precision: str) -> str:
    """The file name of a variant kept in a cache: keyed by its source's sha256 and the rfdeploy
    version (the conversion rules belong to the version)."""
    _check(precision)
    return f"{stem}-{source_sha256[:16]}-v{version}.{precision}.onnx"


def int8_cpu_note(metadata: dict[str, str], providers: list[str]) -> str | None:
    """A warning for running an INT8 file made for TensorRT on onnxruntime's CPU EP, else None."""
    from rfdeploy.core.metadata import INT8_TARGET, PRECISION

    if metadata.get(PRECISION) != "int8":
        return None
    if not providers or providers[0] != "CPUExecutionProvider":
        return None
    if metadata.get(INT8_TARGET, "tensorrt") == "cpu":  # files made before targets existed were Q/DQ for TensorRT
        return None
    return ("this INT8 file was made for TensorRT (explicit Q/DQ): on onnxruntime's CPU EP it runs slower "
            "than the fp32 model; for CPU inference make one with `rfdeploy calibrate --target cpu`")
