"""What `rfdeploy export` and the precision step of `build-engine` do."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from rfdeploy.core.errors import InputError


def verification_inputs(contract, sizes=((480, 640), (97, 255), (600, 512))) -> list[tuple[str, np.ndarray]]:
    """A real photo (the bundled example) through the runtime preprocessing, plus random inputs of
    several sizes, including ones not divisible by the pyramid strides."""
    from rfdeploy.core.examples import example_image
    from rfdeploy.core.image_io import load_image
    from rfdeploy.core.preprocess import preprocess

    photo, _ = preprocess(load_image(example_image()).rgb, contract)
    rng = np.random.default_rng(0)
    out = [("photo " + "x".join(map(str, photo.shape[2:])), photo)]
    for h, w in sizes:
        out.append((f"random {h}x{w}", rng.standard_normal((1, 3, h, w)).astype(np.float32)))
    return out


def export_checkpoint(checkpoint, dst, *, config=None, verify: bool = True, fp16: bool = False,
                      opset: int = 17) -> Iterator[str]:
    """Export one checkpoint; yields report lines (verification errors, FP16 comparison)."""
    from rfdeploy.core.fsutil import sha256_file
    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.models import load

    model = load(checkpoint, config=config)
    res = export_model(model, dst, source_sha256=sha256_file(checkpoint), opset=opset)
    yield f"wrote {res.path} ({res.kind}, opset {opset})"
    if verify:
        from rfdeploy.export.verify import verify_onnx

        try:
            rep = verify_onnx(model, res.path, verification_inputs(model.cfg.contract))
        except BaseException:
            Path(res.path).unlink(missing_ok=True)  # an export that fails verification is not kept
            raise
        yield "verify (onnxruntime vs torch, fp32):"
        yield from ("  " + ln for ln in rep.lines())
    if fp16:
        from rfdeploy.export.fp16 import convert_fp16

        fp = Path(res.path).with_suffix(".fp16.onnx")
        rep16 = convert_fp16(res.path, fp)
        yield f"wrote {fp} (fp16, {rep16.method}; {len(rep16.fp32_nodes)} nodes kept in fp32)"


def precision_variant(onnx_path, precision: str, *, calib_images=None, echo: Callable[[str], None] = print) -> Path:
    """The ONNX file that carries a precision: <name>.fp16.onnx / <name>.int8.onnx beside the
    source, made when missing or older than the source (TensorRT reads precision from the file)."""
    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"ONNX file not found: {src}")
    if precision == "fp32":
        return src
    dst = src.with_suffix(f".{precision}.onnx")
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        echo(f"reusing {dst}")
        return dst
    if precision == "fp16":
        from rfdeploy.export.fp16 import convert_fp16

        convert_fp16(src, dst)
    elif precision == "int8":
        if not calib_images:
            raise InputError("--int8 needs --calib-images (or an existing <name>.int8.onnx from `rfdeploy calibrate`)")
        from rfdeploy.calib import calibrate

        calibrate(src, calib_images, dst, allow_fewer=True)
    else:
        raise InputError(f"unknown precision {precision!r}")
    echo(f"wrote {dst}")
    return dst
