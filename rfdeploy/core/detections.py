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
        """``[{"box", "score", "detector_score"}]``: the same keys with and without a ranker
        (``detector_score`` equals ``score`` when no ranker re-scored the boxes)."""
        det = self.scores if self.detector_scores is None else self.detector_scores
        return [{"box": [round(float(v), ndigits) for v in self.boxes[i]],
                 "score": round(float(self.scores[i]), 4),
                 "detector_score": round(float(det[i]), 4)} for i in range(len(self))]

    def draw(self, image, color=(0, 255, 0), width: int | None = None):
        """A copy of a PIL image with each box and its score drawn on it. Line width and label
        size follow the image size (a label stays readable on an 8K image viewed whole); labels sit
        on a filled tab above the box, or inside it at the top edge of the image."""
        from PIL import ImageDraw, ImageFont

        img = image.convert("RGB").copy()
        draw = ImageDraw.Draw(img)
        side = max(img.size)
        w = width or max(2, round(side / 400))
        font = ImageFont.load_default(size=max(14, round(side / 40)))
        for (x1, y1, x2, y2), s in zip(self.boxes.tolist(), self.scores.tolist()):
            draw.rectangle([x1, y1, x2, y2], outline=color, width=w)
            text = f"{s:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left + 2 * w, bottom - top + 2 * w
            ty = y1 - th if y1 - th >= 0 else y1
            tx = min(max(0.0, x1), max(0.0, img.size[0] - tw))
            draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
            draw.text((tx + w - left, ty + w - top), text, fill=(0, 0, 0), font=font)
        return img
