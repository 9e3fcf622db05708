"""Speed of synthetic scene generation on one core (what each DataLoader worker pays).

    python benchmarks/synth_speed.py [--data /work/shared/data] [--n 200] [--size 1024]

Reports wall and process-CPU milliseconds per scene after a warm-up that fills the per-process
image caches, plus a breakdown by the scene's largest face (big faces cost the most pixels).
"""

from __future__ import annotations

import argparse
import os
import time

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("RFDEPLOY_DATA", "/work/shared/data"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:  # one core, as in a DataLoader worker
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    from rfdeploy.train.synth import SceneGenerator

    g = SceneGenerator(
        f"{args.data}/facecrops", f"{args.data}/backgrounds",
        out_size=(args.size, args.size), seed=args.seed,
    )
    for i in range(60):  # warm-up: decode every crop and background once
        g.generate(10**6 + i)
    for k in range(len(g.crops)):
        g._crop(k)
    for k in range(len(g.backgrounds)):
        g._bg_levels(k)
    wall, cpu, biggest, counts = [], [], [], []
    for i in range(args.n):
        t0, c0 = time.perf_counter(), time.process_time()
        s = g.generate(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        sz = np.sqrt((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])) if len(s.boxes) else np.zeros(1)
        biggest.append(float(sz.max()))
        counts.append(len(s.boxes))
    wall, cpu, biggest = np.array(wall) * 1e3, np.array(cpu) * 1e3, np.array(biggest)
    print(f"{args.n} scenes {args.size}x{args.size}, {np.mean(counts):.1f} faces/scene")
    print(f"wall ms/scene: mean {wall.mean():.1f} median {np.median(wall):.1f} p90 {np.percentile(wall, 90):.1f}")
    print(f"cpu  ms/scene: mean {cpu.mean():.1f} median {np.median(cpu):.1f} p90 {np.percentile(cpu, 90):.1f}")
    for lo, hi in ((0, 64), (64, 256), (256, 10**6)):
        m = (biggest >= lo) & (biggest < hi)
        if m.any():
            print(f"  largest face {lo}-{hi} px: {m.sum()} scenes, cpu mean {cpu[m].mean():.1f} ms")


if __name__ == "__main__":
    main()
