"""FP16 and INT8 versions of the real exported detector and ranker: agreement with fp32, CPU latency.

    python benchmarks/precision_real.py                      # bundled default models (exported here)
    python benchmarks/precision_real.py --det det.onnx --rank rank.onnx [--calib DIR_OR_FILES...]

The detector runs on the bundled astronaut photo brought to VGA (scaled to 640 wide, centre-cropped
to 640x480). Its fp16 / int8 candidates are paired with the fp32 ones by
rfdeploy.export.verify.compare_candidates (robust to TopK order among near-ties). The ranker is fed
the fp32 detector's candidates packed by rfdeploy.core.boxes.pack_candidates; its refined scores
are compared on the real (non-padded) rows. Latency: median of --runs single-image runs of each
precision in this one process, after two warm-up runs (onnxruntime CPU, default threads).
INT8 files for both targets (``tensorrt``: Q/DQ; ``cpu``: onnxruntime's operator format), max
calibration on: the astronaut, tests/fixtures/grace_hopper.jpg and, when present, the
backgrounds of the shared data folder. benchmarks/int8.py measures the INT8 goals in full.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfdeploy.calib import calibrate
from rfdeploy.calib.images import list_image_files
from rfdeploy.core.boxes import pack_candidates
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.metadata import CONTRACT as METADATA_KEY
from rfdeploy.core.metadata import onnx_metadata as read_metadata
from rfdeploy.core.onnxinfo import load_onnx
from rfdeploy.core.preprocess import preprocess
from rfdeploy.export.fp16 import convert_fp16
from rfdeploy.export.verify import compare_candidates

ASTRONAUT = ROOT / "rfdeploy" / "assets" / "astronaut.jpg"
GRACE = ROOT / "tests" / "fixtures" / "grace_hopper.jpg"


def vga_image(path: Path = ASTRONAUT) -> np.ndarray:
    """The photo scaled to 640 wide and centre-cropped (or padded by edge rows) to 640x480, RGB uint8."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    im = im.resize((640, max(1, round(h * 640 / w))), Image.BILINEAR)
    a = np.asarray(im)
    if a.shape[0] >= 480:
        top = (a.shape[0] - 480) // 2
        return np.ascontiguousarray(a[top : top + 480])
    return np.pad(a, ((0, 480 - a.shape[0]), (0, 0), (0, 0)), mode="edge")


def calibration_images() -> list[Path]:
    files = [ASTRONAUT, GRACE]
    shared = Path(os.environ.get("RFDEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data")) / "backgrounds"
    if shared.is_dir():
        files += list_image_files(shared)
    return files


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _median_ms(sess, feed: dict, runs: int) -> float:
    for _ in range(2):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _contract(path: Path) -> PreprocessContract:
    return PreprocessContract.from_json(read_metadata(load_onnx(path))[METADATA_KEY])


def _errors(errs) -> dict:
    return {e.name: {"max_abs": e.max_abs, "max_rel": e.max_rel, "n": e.compared} for e in errs}


LOW = ("fp16", "int8_tensorrt", "int8_cpu")


def detector_report(det: Path, out: Path, calib: list[Path], runs: int, min_score: float) -> tuple[dict, tuple]:
    fp16 = out / "det.fp16.onnx"
    t = time.perf_counter()
    convert_fp16(det, fp16)
    t16 = time.perf_counter() - t
    paths, conv_s, nodes = {"fp32": det, "fp16": fp16}, {"fp16": round(t16, 2)}, {}
    for target in ("tensorrt", "cpu"):
        key = f"int8_{target}"
        paths[key] = out / f"det.int8.{target}.onnx"
        t = time.perf_counter()
        rep = calibrate(det, calib, paths[key], num=len(calib), calib_size=640, allow_fewer=True, target=target)
        conv_s[key] = round(time.perf_counter() - t, 2)
        nodes[key] = rep.quantized_nodes
    rgb = vga_image()
    x, _ = preprocess(rgb, _contract(det))
    feed = {"image": x}
    sessions = {k: _session(p) for k, p in paths.items()}
    ref_b, ref_s = sessions["fp32"].run(None, feed)
    result = {"input_shape": list(x.shape), "conversion_s": conv_s,
              "int8_quantized_nodes": nodes, "calibration_images": rep.num_used,
              "fp32_candidates_over_threshold": int((ref_s[0] > min_score).sum())}
    for k in LOW:
        b, s = sessions[k].run(None, feed)
        result[f"{k}_vs_fp32"] = _errors(compare_candidates(b[0], s[0], ref_b[0], ref_s[0], min_score))
    result["median_ms"] = {k: round(_median_ms(s, feed, runs), 2) for k, s in sessions.items()}
    return result, (rgb, ref_b[0], ref_s[0])


def ranker_report(rank: Path, out: Path, calib: list[Path], runs: int, candidates: tuple) -> dict:
    paths = {"fp32": rank, "fp16": out / "rank.fp16.onnx"}
    convert_fp16(rank, paths["fp16"])
    for target in ("tensorrt", "cpu"):
        paths[f"int8_{target}"] = out / f"rank.int8.{target}.onnx"
        calibrate(rank, calib, paths[f"int8_{target}"], num=len(calib), calib_size=640, allow_fewer=True,
                  target=target)
    rgb, boxes, scores = candidates
    sess = {k: _session(p) for k, p in paths.items()}
    n = sess["fp32"].get_inputs()[1].shape[1]
    packed, order = pack_candidates(boxes, scores, rgb.shape[1], rgb.shape[0], n)
    image, _ = preprocess(rgb, _contract(rank))
    feed = {"image": image, "boxes": packed[None]}
    ref = sess["fp32"].run(None, feed)[0][0, : len(order)]
    result = {"input_shape": list(image.shape), "real_rows": len(order)}
    for k in LOW:
        got = sess[k].run(None, feed)[0][0, : len(order)]
        err = float(np.abs(got - ref).max()) if len(order) else 0.0
        result[f"{k}_vs_fp32"] = {"scores": {"max_abs": err, "max_rel": err / max(float(np.abs(ref).max()), 1e-12)}}
    result["median_ms"] = {k: round(_median_ms(s, feed, runs), 2) for k, s in sess.items()}
    return result


def export_defaults(out: Path) -> tuple[Path, Path]:
    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_RANKER, load

    det, rank = out / "det.onnx", out / "rank.onnx"
    export_model(load(DEFAULT_DETECTOR), det)
    export_model(load(DEFAULT_RANKER), rank)
    return det, rank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--det", type=Path, help="fp32 detector ONNX (default: export the bundled default)")
    ap.add_argument("--rank", type=Path, help="fp32 ranker ONNX (default: export the bundled default)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--min-score", type=float, default=0.05, help="candidates compared: over this score, or the best 50")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        det, rank = args.det, args.rank
        if det is None or rank is None:
            d, r = export_defaults(tmp)
            det, rank = det or d, rank or r
        calib = calibration_images()
        det_res, cands = detector_report(det, tmp, calib, args.runs, args.min_score)
        res = {"detector": det_res, "ranker": ranker_report(rank, tmp, calib, args.runs, cands)}
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
