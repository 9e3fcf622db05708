"""8K end-to-end: CPU time and peak RSS with the default pipeline (tiled, batched), and on a CUDA
GPU (when present) torch fp16 time of batched tiles vs the same tiles one at a time.

    python benchmarks/large_image.py [--size 7680x4320] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np


def composed_image(w: int, h: int) -> np.ndarray:
    from PIL import Image

    from rfdeploy.runtime.examples import example_image

    tile = np.asarray(Image.open(example_image()).convert("RGB"))
    reps = (h // tile.shape[0] + 1, w // tile.shape[1] + 1, 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:h, :w])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="7680x4320")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    from rfdeploy.runtime.pipeline import FacePipeline, Timings

    rgb = composed_image(w, h)
    pipe = FacePipeline.create(backend=args.backend)
    pipe.detect(rgb)  # warm-up (and one-time export)
    totals, stages = [], []
    for _ in range(args.runs):
        t = Timings()
        t0 = time.perf_counter()
        dets = pipe.detect(rgb, t)
        totals.append(time.perf_counter() - t0)
        stages.append(t.as_ms())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{w}x{h} CPU end-to-end (detector + ranker): median {statistics.median(totals):.2f} s over {args.runs} runs, "
          f"{len(dets)} faces, peak RSS {rss_mb:.0f} MB")
    print("stages (last run, ms):", stages[-1])
    print("notes:", "; ".join(pipe.notes))

    import torch

    if not torch.cuda.is_available():
        print("CUDA: not available here; the GPU part (torch fp16, batched vs one-by-one tiles) did not run")
        return
    from rfdeploy.models import DEFAULT_DETECTOR
    from rfdeploy.runtime.backends.torch_runner import TorchRunner
    from rfdeploy.runtime.facelogic import detector_batches

    runner = TorchRunner(DEFAULT_DETECTOR, device="cuda", fp16=True).activate()
    cfg = pipe._logic
    batches = list(detector_batches(rgb, cfg))

    def run(batched: bool):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x, _ in batches:
            if batched:
                runner.infer({"image": x})
            else:
                for i in range(x.shape[0]):
                    runner.infer({"image": x[i:i + 1]})
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(True), run(False)
    b = statistics.median(run(True) for _ in range(5))
    o = statistics.median(run(False) for _ in range(5))
    print(f"GPU torch fp16 detector over all tiles: batched {b * 1000:.1f} ms, one at a time {o * 1000:.1f} ms, ratio {o / b:.2f}x")


if __name__ == "__main__":
    main()
