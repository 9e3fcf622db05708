"""What `rfdeploy export` does. The exporter, PyTorch and the converters are imported inside the
functions: the verification inputs need neither torch nor onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from rfdeploy.core.examples import example_image
from rfdeploy.core.fsutil import atomic_path, sha256_file
from rfdeploy.core.image_io import load_image
from rfdeploy.core.precision import variant_path
from rfdeploy.core.preprocess import preprocess
from rfdeploy.models import load


def verification_inputs(contract, sizes=((480, 640), (97, 255), (600, 512))) -> list[tuple[str, np.ndarray]]:
    """A real photo (the bundled example) through the runtime preprocessing, plus random inputs of
    several sizes, including ones not divisible by the pyramid strides."""
    photo, _ = preprocess(load_image(example_image()).rgb, contract)
    rng = np.random.default_rng(0)
    out = [("photo " + "x".join(map(str, photo.shape[2:])), photo)]
    for h, w in sizes:
        out.append((f"random {h}x{w}", rng.standard_normal((1, 3, h, w)).astype(np.float32)))
    return out


def export_checkpoint(checkpoint, dst, *, config=None, verify: bool = True, fp16: bool = False,
                      opset: int = 17) -> Iterator[str]:
    """Export one checkpoint; yields report lines (verification errors, FP16 comparison)."""
    from rfdeploy.export.onnx_export import export_model

    model = load(checkpoint, config=config)
    dst = Path(dst)
    lines: list[str] = []
    # exported and verified beside dst, then renamed onto it: a failed or interrupted export or
    # verification leaves whatever file was there before untouched
    with atomic_path(dst, suffix=".onnx") as tmp:
        res = export_model(model, tmp, source_sha256=sha256_file(checkpoint), opset=opset)
        lines.append(f"wrote {dst} ({res.kind}, opset {opset})")
        if verify:
            from rfdeploy.export.verify import verify_onnx

            rep = verify_onnx(model, tmp, verification_inputs(model.cfg.contract))
            lines.append("verify (onnxruntime vs torch, fp32):")
            lines += ["  " + ln for ln in rep.lines()]
    yield from lines
    if fp16:
        from rfdeploy.export.fp16 import convert_fp16

        fp = variant_path(dst, "fp16")
        rep16 = convert_fp16(dst, fp)
        yield f"wrote {fp} (fp16, {rep16.method}; {len(rep16.fp32_nodes)} nodes kept in fp32)"
