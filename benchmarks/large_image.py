"""8K end-to-end: time and peak RSS of the default pipeline (tiled, batched), and on a CUDA GPU
(when present) torch fp16 end-to-end with pre/post-processing on the GPU, batched tiles vs the same
tiles one at a time, with and without CUDA graphs, peak GPU memory; plus VGA latency on the GPU.

    python benchmarks/large_image.py [--size 7680x4320] [--runs 3] [--backend auto] [--gpu-only]
                                     [--vga] [--json results.json] [--summary results.json]

``--gpu-only`` skips the CPU run; ``--vga`` adds the GPU VGA latency rows; ``--json`` writes every
row plus the goals (docs/benchmarks.md) checked; ``--summary JSON`` prints the table of such a file.
benchmarks/gpu_check.sh runs it with all of these.
Every figure is a median over the runs after one warm-up; ratios compare configurations measured
in this same process.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import time

import numpy as np

# Goals of docs/benchmarks.md for the GPU path (H100/H200)
GOAL_8K_MS = 150.0
GOAL_BATCH_SPEEDUP = 4.0

GPU_8K = [  # (label, FacePipeline.create options)
    ("fp16 batched by 8", dict(tile_batch=8)),
    ("fp16 one tile at a time", dict(tile_batch=1)),
    ("fp16 batched by 8, CUDA graphs", dict(tile_batch=8, cuda_graph=True)),
    ("fp16 one tile at a time, CUDA graphs", dict(tile_batch=1, cuda_graph=True)),
    ("fp16 batched by 8, host pre/post", dict(tile_batch=8, torch_preprocess=False)),
]
GPU_VGA = [
    ("fp32", dict(fp16=False)),
    ("fp16", dict()),
    ("fp16, CUDA graphs", dict(cuda_graph=True)),
]


def composed_image(w: int, h: int) -> np.ndarray:
    from PIL import Image

    from rfdeploy.core.examples import example_image

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


def gpu_rows(rgb, size: str, configs, runs: int) -> list[dict]:
    """One row per configuration, with and without the ranker; each pipeline is dropped (and the
    CUDA cache emptied) before the next, so peak memory is that configuration's own."""
    import torch

    from rfdeploy.runtime.pipeline import FacePipeline

    rows = []
    for label, kw in configs:
        for use_ranker in (False, True):
            opts = dict(backend="torch", device="cuda", fp16=True, use_ranker=use_ranker)
            opts.update(kw)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            pipe = FacePipeline.create(**opts)
            med, stages, n = timed_runs(pipe, rgb, runs, torch.cuda.synchronize)
            row = {
                "size": size, "config": label + (" + ranker" if use_ranker else ""), "ranker": use_ranker,
                "median_ms": round(med * 1000, 1), "faces": n,
                "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                "stages_ms": stages, "notes": [x for x in pipe.notes if "CUDA graph" in x],
            }
            rows.append(row)
            print(f"  {size:>9} {row['config']:<46} median {row['median_ms']:8.1f} ms  {n:4d} faces  "
                  f"GPU peak {row['gpu_peak_mib']:6d} MiB  {stages}", flush=True)
            for note in row["notes"]:
                print("    note:", note, flush=True)
            del pipe
    return rows


def goals(rows: list[dict], size_8k: str) -> list[dict]:
    """The goals of docs/benchmarks.md, each with the figures it was judged on."""
    ms = {(r["size"], r["config"]): r["median_ms"] for r in rows}
    out = []
    for suffix in ("", " + ranker"):
        best = min(ms[(size_8k, f"fp16 batched by 8{suffix}")], ms[(size_8k, f"fp16 batched by 8, CUDA graphs{suffix}")])
        out.append({"goal": f"8K end-to-end{suffix} <= {GOAL_8K_MS:.0f} ms", "value": f"{best:.1f} ms",
                    "met": best <= GOAL_8K_MS})
        b, o = ms[(size_8k, f"fp16 batched by 8{suffix}")], ms[(size_8k, f"fp16 one tile at a time{suffix}")]
        out.append({"goal": f"batched >= {GOAL_BATCH_SPEEDUP:.0f}x one tile at a time{suffix}",
                    "value": f"{o / b:.2f}x", "met": o / b >= GOAL_BATCH_SPEEDUP})
        for size in sorted({r["size"] for r in rows}, key=lambda s: s != size_8k):
            eager = ms.get((size, f"fp16 batched by 8{suffix}")) or ms.get((size, f"fp16{suffix}"))
            graph = ms.get((size, f"fp16 batched by 8, CUDA graphs{suffix}")) or ms.get((size, f"fp16, CUDA graphs{suffix}"))
            if eager and graph:
                out.append({"goal": f"{size} CUDA-graph replay faster than eager{suffix}",
                            "value": f"{graph:.1f} vs {eager:.1f} ms", "met": graph < eager})
    return out


def print_summary(rows: list[dict], checked: list[dict], gpu: str) -> None:
    print(f"\nSummary ({gpu}; medians, ms, end-to-end from decoded pixels to final faces)")
    print(f"{'size':>9}  {'configuration':<46} {'median ms':>10} {'faces':>6} {'GPU peak MiB':>13}")
    for r in rows:
        print(f"{r['size']:>9}  {r['config']:<46} {r['median_ms']:>10.1f} {r['faces']:>6} {r['gpu_peak_mib']:>13}")
    print(f"\n{'goal':<58} {'measured':>22}  met")
    for g in checked:
        print(f"{g['goal']:<58} {g['value']:>22}  {'yes' if g['met'] else 'NO'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="7680x4320")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU end-to-end run")
    ap.add_argument("--vga", action="store_true", help="add GPU VGA (640x480) latency rows")
    ap.add_argument("--json", help="write the GPU rows and the goals checked to this file")
    ap.add_argument("--summary", metavar="JSON", help="only print the summary table of an earlier --json file")
    args = ap.parse_args()
    if args.summary:
        with open(args.summary) as f:
            d = json.load(f)
        print_summary(d["rows"], d["goals"], f"{d['gpu']}, torch {d['torch']}")
        return 0
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
        del pipe

    if not torch.cuda.is_available():
        print("CUDA: not available here; the GPU part (torch fp16, batched vs one-by-one tiles) did not run")
        return 1 if args.gpu_only else 0
    gpu = torch.cuda.get_device_name(0)
    print(f"GPU: {gpu}, torch {torch.__version__}", flush=True)
    runs = max(5, args.runs)
    rows = gpu_rows(rgb, args.size, GPU_8K, runs)
    if args.vga:
        rows += gpu_rows(composed_image(640, 480), "640x480", GPU_VGA, max(20, runs))
    checked = goals(rows, args.size)
    print_summary(rows, checked, gpu)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": gpu, "torch": torch.__version__, "rows": rows, "goals": checked}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
