"""8K end-to-end: time and peak RSS of the default pipeline (tiled, batched), and on a CUDA GPU
(when present) torch fp16 end-to-end with pre/post-processing on the GPU, batched tiles vs the same
tiles one at a time, with and without CUDA graphs.

    python benchmarks/large_image.py [--size 7680x4320] [--runs 3] [--backend auto] [--gpu-only]

Every figure is a median over ``--runs`` after one warm-up; ratios compare configurations
measured in this same process.
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


def timed_runs(pipe, rgb, runs: int, sync=None):
    from rfdeploy.runtime.pipeline import Timings

    pipe.detect(rgb)  # warm-up (one-time export, cuDNN autotuning, graph capture)
    totals, stages, n = [], [], 0
    for _ in range(runs):
        t = Timings()
        if sync:
            sync()
        t0 = time.perf_counter()
        n = len(pipe.detect(rgb, t))
        if sync:
            sync()
        totals.append(time.perf_counter() - t0)
        stages.append(t.as_ms())
    return statistics.median(totals), stages[-1], n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="7680x4320")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU end-to-end run")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    import torch

    from rfdeploy.runtime.pipeline import FacePipeline

    rgb = composed_image(w, h)
    if not args.gpu_only:
        pipe = FacePipeline.create(backend=args.backend)
        med, stages, n = timed_runs(pipe, rgb, args.runs)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{w}x{h} CPU end-to-end (detector + ranker): median {med:.2f} s over {args.runs} runs, "
              f"{n} faces, peak RSS {rss_mb:.0f} MB")
        print("  stages (last run, ms):", stages)
        print("  notes:", "; ".join(pipe.notes))

    if not torch.cuda.is_available():
        print("CUDA: not available here; the GPU part (torch fp16, batched vs one-by-one tiles) did not run")
        return
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    sync = torch.cuda.synchronize
    results = {}
    for label, kw in [
        ("fp16, tiles batched by 8", dict(tile_batch=8)),
        ("fp16, tiles one at a time", dict(tile_batch=1)),
        ("fp16, batched by 8, CUDA graphs", dict(tile_batch=8, cuda_graph=True)),
        ("fp16, one at a time, CUDA graphs", dict(tile_batch=1, cuda_graph=True)),
        ("fp16, batched by 8, host pre/post", dict(tile_batch=8, torch_preprocess=False)),
    ]:
        for use_ranker in (False, True):
            pipe = FacePipeline.create(backend="torch", device="cuda", fp16=True, use_ranker=use_ranker, **kw)
            torch.cuda.reset_peak_memory_stats()
            med, stages, n = timed_runs(pipe, rgb, max(5, args.runs), sync)
            peak = torch.cuda.max_memory_allocated() / 2**20
            name = f"{label}{' + ranker' if use_ranker else ''}"
            results[name] = med
            print(f"  {name:<48} median {med * 1000:8.1f} ms  {n:4d} faces  GPU peak {peak:6.0f} MiB  {stages}")
            extra = [x for x in pipe.notes if "CUDA graph" in x]
            if extra:
                print("   ", "; ".join(extra))
    for suffix in ("", " + ranker"):
        b = results[f"fp16, tiles batched by 8{suffix}"]
        o = results[f"fp16, tiles one at a time{suffix}"]
        print(f"ratio one-at-a-time / batched{suffix or ' (detector only)'}: {o / b:.2f}x")


if __name__ == "__main__":
    main()
