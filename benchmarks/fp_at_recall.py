"""False positives on the dev photos at matched recall: for each detector, how many non-faces score
above the threshold at which it first finds N of the dev set's faces (IoU 0.5). This compares
detectors' ranking of faces against non-faces independently of where each one's output threshold
was set.

    python benchmarks/fp_at_recall.py DETECTOR [DETECTOR ...] [--faces 30 32 34 35 36 37]

DETECTOR: an rfdeploy checkpoint or ONNX file, or a third-party ONNX detector (RetinaFace,
CenterFace, SCRFD: the adapter is found from the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle_detector import SHARED, matched_scores  # noqa: E402


def false_positives_at(scores, labels, want: int) -> tuple[int, float] | None:
    """(false positives, threshold) when the ``want``-th face is found; None if it never is."""
    keep = labels >= 0
    s, l = scores[keep], labels[keep]
    order = np.argsort(-s, kind="stable")
    s, l = s[order], l[order]
    tp, fp = np.cumsum(l == 1), np.cumsum(l == 0)
    i = int(np.searchsorted(tp, want))
    if i >= len(tp):
        return None
    return int(fp[i]), float(s[i])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("detectors", nargs="+")
    ap.add_argument("--faces", type=int, nargs="+", default=[30, 32, 34, 35, 36, 37])
    ap.add_argument("--dev", type=Path, default=SHARED / "realfaces" / "dev" / "annotations.json")
    args = ap.parse_args()

    from rfdeploy.runtime.pipeline import FacePipeline

    print(f"dev photos ({args.dev}): false positives (threshold) when the N-th face is found")
    print("detector".ljust(44) + "".join(f"N={n}".rjust(14) for n in args.faces))
    for det in args.detectors:
        pipe = FacePipeline.create(detector=det, use_ranker=False, score_thr=0.0)
        scores, labels, _ = matched_scores(pipe, args.dev)
        cells = []
        for n in args.faces:
            got = false_positives_at(scores, labels, n)
            cells.append("-" if got is None else f"{got[0]} ({got[1]:.3f})")
        print(Path(det).name.ljust(44) + "".join(c.rjust(14) for c in cells))


if __name__ == "__main__":
    main()
