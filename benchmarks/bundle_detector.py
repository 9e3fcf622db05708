"""Make a trained detector checkpoint the bundled default: pick its output score threshold (F1-best
at IoU 0.5 on held-out composed scenes plus any held-out labelled real photos given with
--threshold-set, never on the dev photos), store it in the config, write
the checkpoint with fp16 storage, and report what the threshold gives on the dev photos (false
positives, misses) and on the example photo.

    python benchmarks/bundle_detector.py RUN/last.safetensors [--out rfdeploy/models/weights/X.safetensors]
        [--beta 0.5] [--threshold-set HELD_OUT.json ...] [--tile-faces MIN:MAX]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_dev import holdout_scenes  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def matched_scores(pipe, gt_json: Path):
    """(scores, labels) of every detection: 1 true positive, 0 false positive, -1 ignored (IoU 0.5)."""
    from rfdeploy.core.image_io import load_image
    from rfdeploy.eval.ap import load_annotations, match_image

    scores, labels, faces = [], [], 0
    for g in load_annotations(gt_json):
        det = pipe.detect(load_image(gt_json.parent / g.file).rgb)
        scores.append(det.scores)
        labels.append(match_image(det.boxes, det.scores, g, 0.5))
        faces += int((~g.ignore).sum())
    return np.concatenate(scores), np.concatenate(labels), faces


def fbeta_best_threshold(scores, labels, faces, beta: float = 1.0) -> tuple[float, float, float]:
    """The score threshold with the best F-beta (beta < 1 weighs precision higher)."""
    keep = labels >= 0
    s, l = scores[keep], labels[keep]
    order = np.argsort(-s, kind="stable")
    s, l = s[order], l[order]
    tp = np.cumsum(l == 1)
    fp = np.cumsum(l == 0)
    precision, recall = tp / np.maximum(tp + fp, 1), tp / max(faces, 1)
    b2 = beta * beta
    f1 = (1 + b2) * precision * recall / np.maximum(b2 * precision + recall, 1e-9)
    i = int(np.argmax(f1))
    return float(s[i]), float(precision[i]), float(recall[i])


def at_threshold(scores, labels, faces, thr):
    sel = scores >= thr
    return int((labels[sel] == 1).sum()), int((labels[sel] == 0).sum()), faces


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default=None, help="where to write the bundled checkpoint (default: only report)")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--holdout", type=int, default=12)
    ap.add_argument("--beta", type=float, default=1.0,
                    help="pick the threshold by F-beta over the threshold sets (0.5: precision first)")
    ap.add_argument("--threshold-set", type=Path, action="append", default=[],
                    help="held-out labelled real photos (rfdeploy JSON, never the dev set) whose detections "
                         "join the composed scenes' when the threshold is picked; repeatable")
    ap.add_argument("--tile-faces", default=None, metavar="MIN:MAX",
                    help="store the tiling face range in the config (sizes one pyramid pass covers, "
                         "see DetectorConfig.tile_max_face); measure it with benchmarks/eval_8k.py --tile-faces")
    args = ap.parse_args()
    tile_faces = tuple(int(v) for v in args.tile_faces.split(":")) if args.tile_faces else None

    from rfdeploy.core.examples import example_image
    from rfdeploy.core.image_io import load_image
    from rfdeploy.models import load
    from rfdeploy.models.checkpoint import save_checkpoint
    from rfdeploy.runtime.pipeline import FacePipeline

    out = Path(tempfile.mkdtemp(prefix="rfdeploy-thr-"))
    held = holdout_scenes(args.data, args.holdout, out)
    pipe = FacePipeline.create(detector=args.checkpoint, use_ranker=False, score_thr=0.0)
    sets = [("held-out composed scenes", held)] + [(str(p), p) for p in args.threshold_set]
    pooled = [matched_scores(pipe, path) for _, path in sets]
    for (name, _), (s, l, n) in zip(sets, pooled):
        t, p, r = fbeta_best_threshold(s, l, n)
        print(f"{name}: F1-best threshold {t:.2f} (precision {p:.3f}, recall {r:.3f})")
    # one threshold for every set together: real photos bring the body and clothing negatives
    # that composed scenes lack
    thr, p, r = fbeta_best_threshold(np.concatenate([x[0] for x in pooled]), np.concatenate([x[1] for x in pooled]),
                                  sum(x[2] for x in pooled), args.beta)
    thr = round(thr, 2)
    if len(sets) > 1 or args.beta != 1.0:
        print(f"all threshold sets together: F{args.beta:g}-best threshold {thr:.2f} (precision {p:.3f}, recall {r:.3f})")
    dev = args.data / "realfaces" / "dev" / "annotations.json"
    if dev.is_file():
        s, l, n = matched_scores(pipe, dev)
        for t in sorted({0.5, 0.6, 0.7, 0.8, 0.9, thr}):
            tp, fp, faces = at_threshold(s, l, n, t)
            print(f"dev photos at {t:.2f}: {tp} of {faces} faces found, {fp} false positives "
                  f"({int(((l == 0) & (s >= max(t, 0.9))).sum())} of them >= 0.9)")
    det = pipe.detect(load_image(example_image()).rgb)
    print(f"example photo: {int((det.scores >= thr).sum())} faces at {thr:.2f}")
    if args.out:
        model = load(args.checkpoint)
        model.cfg = dataclasses.replace(model.cfg, output_score_threshold=thr)
        if tile_faces:
            model.cfg = dataclasses.replace(model.cfg, tile_min_face=tile_faces[0], tile_max_face=tile_faces[1])
        save_checkpoint(model, args.out, dtype=__import__("torch").float16)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
