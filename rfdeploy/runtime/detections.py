"""One value type for face detections, used by every backend and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """Faces in one image: ``boxes`` [M,4] x1,y1,x2,y2 in image pixels, ``scores`` [M].

    ``detector_scores`` holds the detector's own scores when a ranker re-scored them.
    """

    boxes: np.ndarray
    scores: np.ndarray
    detector_scores: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.boxes) != len(self.scores):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")
        if self.detector_scores is not None:
            self.detector_scores = np.asarray(self.detector_scores, dtype=np.float32).reshape(-1)
            if len(self.detector_scores) != len(self.scores):
                raise ValueError("detector_scores must have one entry per box")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __getitem__(self, index) -> "Detections":
        ds = None if self.detector_scores is None else self.detector_scores[index]
        return Detections(self.boxes[index], self.scores[index], ds, dict(self.meta))

    def filter(self, min_score: float) -> "Detections":
        return self[self.scores >= min_score]

    def sorted(self) -> "Detections":
        return self[np.argsort(-self.scores, kind="stable")]

    def to_json(self, ndigits: int = 2) -> list[dict]:
        out = []
        for i in range(len(self)):
            rec = {
                "box": [round(float(v), ndigits) for v in self.boxes[i]],
                "score": round(float(self.scores[i]), 4),
            }
            if self.detector_scores is not None:
                rec["detector_score"] = round(float(self.detector_scores[i]), 4)
            out.append(rec)
        return out

    def draw(self, image, color=(0, 255, 0), width: int | None = None):
        """Return a copy of a PIL image with boxes and scores drawn on it."""
        from PIL import ImageDraw

        img = image.convert("RGB").copy()
        draw = ImageDraw.Draw(img)
        w = width or max(2, round(max(img.size) / 500))
        for (x1, y1, x2, y2), s in zip(self.boxes.tolist(), self.scores.tolist()):
            draw.rectangle([x1, y1, x2, y2], outline=color, width=w)
            draw.text((x1 + w, max(0, y1 - 12 - w)), f"{s:.2f}", fill=color)
        return img
