"""The ONNX file that carries a precision, for ``build-engine --fp16/--int8``: the fp16 or int8
variant beside the fp32 export (named by rfdeploy.core.precision), made when it is missing or
older than its source. TensorRT reads precision from the file (strongly typed networks), so the
engine is built from the variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rfdeploy.core.errors import InputError
from rfdeploy.core.precision import PRECISIONS, fresh_variant, variant_path


def precision_variant(onnx_path, precision: str, *, calib_images=None, echo: Callable[[str], None] = print) -> Path:
    """The ONNX file that carries ``precision`` (fp32: ``onnx_path`` itself): the variant beside it,
    reused when fresh, else made (fp16: converted; int8: calibrated on ``calib_images``)."""
    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"ONNX file not found: {src}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}")
    if precision == "fp32":
        return src
    reuse = fresh_variant(src, precision)
    if reuse is not None:
        echo(f"reusing {reuse}")
        return reuse
    dst = variant_path(src, precision)
    # the converters need onnx (and onnxruntime's quantizer): imported only when a variant is made
    if precision == "fp16":
        from rfdeploy.export.fp16 import convert_fp16

        convert_fp16(src, dst)
    else:
        if not calib_images:
            raise InputError("--int8 needs --calib-images (or an existing <name>.int8.onnx from `rfdeploy calibrate`)")
        from rfdeploy.calib import calibrate

        calibrate(src, calib_images, dst, allow_fewer=True)
    echo(f"wrote {dst}")
    return dst
