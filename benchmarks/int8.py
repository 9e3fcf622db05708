"""INT8 goals in one run: accuracy deltas, CPU speed, calibration memory; prints a markdown table.

    python benchmarks/int8.py --detector DET [--ranker RANK] [--data ../shared/data] [--num 256]
                              [--methods max,percentile,entropy] [--max-nmse 0.002] [--out-dir DIR]

DET / RANK: an rfdeploy checkpoint (.safetensors, exported here) or an fp32 ONNX export.
Calibration pictures are training data only: the shared data's ``backgrounds/`` and frames of
its ``video/`` clips (enough frames per clip to reach ``--num``), never the dev photos.

For every method, ``rfdeploy calibrate`` runs in its own process (``--target tensorrt`` and
``--target cpu``) and its peak RSS is read from the kernel (``os.wait4``). Then, for each target,
one more run with ``--analyse --max-nmse`` writes the mixed model (the most sensitive layers left
in float) with the method given by ``--mixed-method``.

Accuracy: AP@0.5 through the same pipeline (``FacePipeline``, onnxruntime CPU EP, NMS 0.4, no
ranker) on the dev photos and on held-out composed scenes (crops and backgrounds of the held-out
split, seed 123, as benchmarks/eval_dev.py), for the fp32 file and every INT8 file. The
TensorRT-target files are evaluated on onnxruntime (Q/DQ arithmetic; no GPU here to run TensorRT).
Speed: fp32 vs each INT8 file on onnxruntime's CPU EP at VGA (640x480, the bundled photo),
in rotating blocks of back-to-back calls in this one process, medians of ``--runs`` rounds, with the default
thread count and with one thread. Ranker (optional): its INT8 files are compared with fp32 on the
fp32 detector's candidates (max abs score error) and timed the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_dev import holdout_scenes  # noqa: E402

GB = 1 << 30


def fp32_onnx(path: Path, out_dir: Path) -> Path:
    if path.suffix.lower() == ".onnx":
        return path
    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.models import load

    dst = out_dir / (path.stem + ".onnx")
    if not dst.exists():
        export_model(load(path), dst)
    return dst


def calibration_inputs(data: Path, num: int) -> tuple[list[str], int]:
    """(paths for --images, frames per video) so that backgrounds + frames reach ``num``."""
    from rfdeploy.calib.images import list_sources

    backgrounds = data / "backgrounds"
    videos = sorted((data / "video").glob("*.mp4"))
    n_bg = len(list_sources(backgrounds))
    per_video = max(1, math.ceil(max(0, num - n_bg) / max(1, len(videos))))
    return [str(backgrounds)] + [str(v) for v in videos], per_video


def run_measured(cmd: list[str]) -> tuple[int, float, str]:
    """(exit code, peak RSS in bytes of that process, output)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read().decode(errors="replace")
    print(f"$ {shlex.join(cmd)}\n  exit {p.returncode}, {time.perf_counter() - t:.0f} s, peak RSS "
          f"{usage.ru_maxrss * 1024 / GB:.2f} GB", flush=True)
    return p.returncode, usage.ru_maxrss * 1024, out


def calibrate_cmd(src: Path, images: list[str], per_video: int, dst: Path, method: str, target: str, num: int,
                  size: int, extra: list[str] = ()) -> list[str]:
    # the mixed run reuses the ranges of the plain run of its method (same key) from the cache
    cmd = [sys.executable, "-m", "rfdeploy.cli", "calibrate", str(src), "-o", str(dst), "--method", method,
           "--target", target, "--num", str(num), "--calib-size", str(size), "--video-frames", str(per_video),
           "--allow-fewer", "--cache-dir", str(dst.parent / "calib-cache")]
    for i in images:
        cmd += ["--images", i]
    return cmd + list(extra)


def ap50(detector: Path, sets: dict[str, Path]) -> dict[str, float]:
    from rfdeploy.eval.api import evaluate_pipeline
    from rfdeploy.runtime.pipeline import FacePipeline

    pipe = FacePipeline.create(detector=detector, use_ranker=False, score_thr=0.0, backend="onnxruntime")
    return {k: float(evaluate_pipeline(pipe, gt)["ap"]["0.50"]) for k, gt in sets.items()}


def vga_feed(model: Path) -> dict[str, np.ndarray]:
    from benchmarks.precision_real import _contract, vga_image
    from rfdeploy.core.preprocess import preprocess

    x, _ = preprocess(vga_image(), _contract(model))
    return {"image": x}


def latency(models: dict[str, Path], feeds: dict[str, dict], runs: int, threads: int) -> dict[str, float]:
    """Median ms per model over ``runs`` rounds of back-to-back blocks, the order rotating
    (rfdeploy.runtime.bench.interleaved_blocks: the same machine state for all)."""
    import onnxruntime as ort

    from rfdeploy.runtime.bench import interleaved_blocks

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    times = interleaved_blocks({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sess.items()}, runs, block=10)
    return {k: statistics.median(v) for k, v in times.items()}


def ranker_agreement(det: Path, rank: Path, variants: dict[str, Path]) -> tuple[dict[str, float], dict]:
    import onnxruntime as ort

    from benchmarks.precision_real import _contract, vga_image
    from rfdeploy.core.boxes import pack_candidates
    from rfdeploy.core.preprocess import preprocess

    rgb = vga_image()
    x, _ = preprocess(rgb, _contract(det))
    boxes, scores = (a[0] for a in ort.InferenceSession(str(det), providers=["CPUExecutionProvider"]).run(None, {"image": x}))
    ref_sess = ort.InferenceSession(str(rank), providers=["CPUExecutionProvider"])
    n = ref_sess.get_inputs()[1].shape[1]
    packed, order = pack_candidates(boxes, scores, rgb.shape[1], rgb.shape[0], n)
    feed = {"image": preprocess(rgb, _contract(rank))[0], "boxes": packed[None]}
    ref = ref_sess.run(None, feed)[0][0, : len(order)]
    errs = {}
    for k, p in variants.items():
        got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0][0, : len(order)]
        errs[k] = float(np.abs(got - ref).max())
    return errs, feed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--ranker", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--calib-size", type=int, default=640)
    ap.add_argument("--methods", default="max,percentile,entropy")
    ap.add_argument("--targets", default="tensorrt,cpu")
    ap.add_argument("--mixed-method", default="max", help="method of the mixed (analysed) models")
    ap.add_argument("--max-nmse", type=float, default=0.0005, help="goal of the mixed models (see calibrate --max-nmse)")
    ap.add_argument("--analyse-num", type=int, default=8)
    ap.add_argument("--analyse-size", type=int, default=320)
    ap.add_argument("--holdout", type=int, default=12)
    ap.add_argument("--runs", type=int, default=8, help="rounds of timing blocks")
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the INT8 files and logs here")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()

    out = args.out_dir or Path(tempfile.mkdtemp(prefix="rfdeploy-int8-"))
    out.mkdir(parents=True, exist_ok=True)
    det = fp32_onnx(args.detector, out)
    rank = fp32_onnx(args.ranker, out) if args.ranker else None
    images, per_video = calibration_inputs(args.data, args.num)
    methods = args.methods.split(",")
    targets = args.targets.split(",")
    results: dict = {"detector": str(args.detector), "num": args.num, "calib_size": args.calib_size, "runs": {}}

    files: dict[str, Path] = {}
    for model, name in ((det, "det"), (rank, "rank")):
        if model is None:
            continue
        for target in targets:
            for method in methods:
                dst = out / f"{name}.{target}.{method}.int8.onnx"
                rc, rss, log = run_measured(calibrate_cmd(model, images, per_video, dst, method, target, args.num,
                                                          args.calib_size))
                results["runs"][dst.name] = {"exit": rc, "peak_rss_gb": round(rss / GB, 2), "log": log[-2000:]}
                if rc == 0:
                    files[f"{name}.{target}.{method}"] = dst
            dst = out / f"{name}.{target}.{args.mixed_method}.mixed.int8.onnx"
            rc, rss, log = run_measured(calibrate_cmd(
                model, images, per_video, dst, args.mixed_method, target, args.num, args.calib_size,
                ["--analyse", "--analyse-num", str(args.analyse_num), "--analyse-size", str(args.analyse_size),
                 "--max-nmse", str(args.max_nmse)]))
            results["runs"][dst.name] = {"exit": rc, "peak_rss_gb": round(rss / GB, 2), "log": log[-4000:]}
            if rc == 0:
                files[f"{name}.{target}.{args.mixed_method}.mixed"] = dst
                sens = json.loads(dst.with_name(dst.stem + ".sensitivity.json").read_text())
                results["runs"][dst.name]["kept_float_units"] = len(sens["kept_float_units"])
                results["runs"][dst.name]["kept_float_nodes"] = len(sens["kept_float_nodes"])
                results["runs"][dst.name]["curve"] = sens["curve"]

    det_files = {k: v for k, v in files.items() if k.startswith("det.")}
    if not args.skip_accuracy:
        sets = {"dev": args.data / "realfaces" / "dev" / "annotations.json",
                "held-out": holdout_scenes(args.data, args.holdout, out)}
        results["ap50"] = {"fp32": ap50(det, sets)}
        for k, p in det_files.items():
            results["ap50"][k] = ap50(p, sets)
            print(k, results["ap50"][k], flush=True)

    feed = vga_feed(det)
    lat_models = {"fp32": det, **{k: p for k, p in det_files.items() if ".cpu." in k or k.endswith("tensorrt.max")}}
    results["latency_ms"] = {str(th or "default"): latency(lat_models, {k: feed for k in lat_models}, args.runs, th)
                             for th in (0, 1)}
    if rank is not None:
        rank_files = {k: v for k, v in files.items() if k.startswith("rank.")}
        errs, rfeed = ranker_agreement(det, rank, rank_files)
        results["ranker_max_abs_error"] = errs
        rmodels = {"fp32": rank, **{k: p for k, p in rank_files.items() if ".cpu." in k or k.endswith("tensorrt.max")}}
        results["ranker_latency_ms"] = {str(th or "default"): latency(rmodels, {k: rfeed for k in rmodels}, args.runs, th)
                                        for th in (0, 1)}
    (out / "int8_results.json").write_text(json.dumps(results, indent=1))
    print_table(results, args)
    print(f"\nfiles and full results: {out}")


def print_table(res: dict, args) -> None:
    print(f"\n### INT8 on {res['detector']} ({res['num']} calibration pictures at {res['calib_size']} px)\n")
    print("| file | AP@0.5 dev (delta) | AP@0.5 held-out (delta) | VGA CPU ms, default threads (x fp32) "
          "| 1 thread (x fp32) | calibration peak RSS GB |")
    print("|---|---|---|---|---|---|")
    ap = res.get("ap50", {})
    lat = res["latency_ms"]
    base = ap.get("fp32", {})

    def cell_ap(k, s):
        if k not in ap:
            return "-"
        v = ap[k][s]
        return f"{v:.3f}" if k == "fp32" else f"{v:.3f} ({v - base[s]:+.3f})"

    def cell_lat(k, th):
        if k not in lat[th]:
            return "-"
        return f"{lat[th][k]:.1f} ({lat[th]['fp32'] / lat[th][k]:.2f}x)"

    keys = ["fp32"] + [k for k in ap if k != "fp32"] + [k for k in lat["default"] if k not in ap and k != "fp32"]
    for k in dict.fromkeys(keys):
        run = res["runs"].get(f"{k}.int8.onnx", {})
        rss = f"{run['peak_rss_gb']:.2f}" if run else "-"
        if run.get("kept_float_units") is not None:
            k_label = f"{k} ({run['kept_float_units']} units / {run['kept_float_nodes']} nodes float)"
        else:
            k_label = k
        print(f"| {k_label} | {cell_ap(k, 'dev')} | {cell_ap(k, 'held-out')} | {cell_lat(k, 'default')} | "
              f"{cell_lat(k, '1')} | {rss} |")
    failed = {k: v for k, v in res["runs"].items() if v["exit"] != 0}
    for k, v in failed.items():
        print(f"\n{k} failed (exit {v['exit']}):\n{v['log'][-600:]}")
    if "ranker_max_abs_error" in res:
        print("\n| ranker file | max abs score error vs fp32 | VGA CPU ms (x fp32) | 1 thread | calibration peak RSS GB |")
        print("|---|---|---|---|---|")
        rl = res["ranker_latency_ms"]
        for k, e in res["ranker_max_abs_error"].items():
            run = res["runs"].get(f"{k}.int8.onnx", {})
            lat_d = f"{rl['default'][k]:.1f} ({rl['default']['fp32'] / rl['default'][k]:.2f}x)" if k in rl["default"] else "-"
            lat_1 = f"{rl['1'][k]:.1f} ({rl['1']['fp32'] / rl['1'][k]:.2f}x)" if k in rl["1"] else "-"
            print(f"| {k} | {e:.2e} | {lat_d} | {lat_1} | {run.get('peak_rss_gb', '-')} |")


if __name__ == "__main__":
    main()
