"""`rfdeploy bench`: per-stage timings (medians after warm-up) and same-run comparisons."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from rfdeploy.core.errors import InputError
from rfdeploy.core.examples import example_image
from rfdeploy.core.image_io import load_image, load_image_bytes
from rfdeploy.runtime.pipeline import Timings

SIZES = {"vga": (640, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160), "8k": (7680, 4320)}


def bench_image(size: str, image_path=None) -> np.ndarray:
    """The image to time: a given photo resized to ``size``, or the bundled example photo."""
    from PIL import Image

    if size not in SIZES:
        raise InputError(f"unknown size {size!r}; choose from {sorted(SIZES)}")

    rgb = load_image(image_path or example_image()).rgb
    w, h = SIZES[size]
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


@dataclass
class BenchResult:
    label: str
    size: str
    runs: int
    median_ms: dict[str, float]
    total_ms: float
    faces: int


def run_bench(pipeline, rgb: np.ndarray, *, label: str, size: str, runs: int = 10, warmup: int = 2) -> BenchResult:
    per_stage: dict[str, list[float]] = {}
    totals = []
    enc = _encode_jpeg(rgb).getvalue()
    dets = None
    for i in range(warmup + runs):
        timings = Timings()
        t0 = time.perf_counter()
        # decode is part of end-to-end: from JPEG bytes, as a file read would give them, by the
        # decoder every input goes through
        img = load_image_bytes(enc, "bench image").rgb
        timings.add("decode", time.perf_counter() - t0)
        dets = pipeline.detect(img, timings)
        total = time.perf_counter() - t0
        if i >= warmup:
            totals.append(total)
            for k, v in timings.stages.items():
                per_stage.setdefault(k, []).append(v)
    med = {k: round(statistics.median(v) * 1000, 2) for k, v in per_stage.items()}
    return BenchResult(label, size, runs, med, round(statistics.median(totals) * 1000, 2), len(dets))


def interleaved_blocks(fns: dict, rounds: int, block: int, warmup: int = 3) -> dict[str, list[float]]:
    """Same-run timing of several configurations: per configuration, the median time (ms) of each
    round's block of ``block`` back-to-back calls (after ``warmup`` untimed ones). The order of
    configurations rotates by one each round, so a machine whose speed drifts slows all alike.
    Blocks rather than one call each: onnxruntime's worker threads spin for a while after a call
    and would slow whichever session ran next."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(warmup):
                fns[n]()
            ts = []
            for _ in range(block):
                t = time.perf_counter()
                fns[n]()
                ts.append((time.perf_counter() - t) * 1000)
            times[n].append(statistics.median(ts))
    return times


def round_ratio(times: list[float], ref: list[float]) -> float:
    """The median over rounds of a configuration's time over the reference's in the same round."""
    return statistics.median(t / r for t, r in zip(times, ref))


def _encode_jpeg(rgb):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    buf.seek(0)
    return buf


def format_results(results: list[BenchResult]) -> str:
    stages = sorted({k for r in results for k in r.median_ms})
    # the configuration column is as wide as its longest name: names are never cut
    width = max([len("configuration")] + [len(r.label) for r in results])
    lines = [f"{'configuration':<{width}} {'size':<6} " + " ".join(f"{s:>10}" for s in stages)
             + f" {'total ms':>10} {'faces':>6}"]
    for r in results:
        lines.append(f"{r.label:<{width}} {r.size:<6} " + " ".join(f"{r.median_ms.get(s, 0):>10.2f}" for s in stages)
                     + f" {r.total_ms:>10.2f} {r.faces:>6}")
    if len(results) == 2:
        a, b = results
        lines.append(f"ratio (second / first, total median): {b.total_ms / a.total_ms:.2f}x")
    return "\n".join(lines)
