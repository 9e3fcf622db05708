"""What `rfdeploy export` does. The exporter, PyTorch and the converters are imported inside the
functions: the verification inputs need neither torch nor onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from rfdeploy.core.examples import example_image
from rfdeploy.core.fsutil import sha256_file
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

        fp = variant_path(res.path, "fp16")
        rep16 = convert_fp16(res.path, fp)
        yield f"wrote {fp} (fp16, {rep16.method}; {len(rep16.fp32_nodes)} nodes kept in fp32)"
