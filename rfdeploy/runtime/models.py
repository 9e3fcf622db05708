"""Model wrappers over a runner: a model is preprocess -> infer -> postprocess.

Each reads its preprocessing contract and config from the runner's model-file metadata.
"""

from __future__ import annotations

import json

import numpy as np

from rfdeploy.contract import PreprocessContract
from rfdeploy.errors import ModelFileError
from rfdeploy.export.onnx_export import KEY_CONFIG, KEY_CONTRACT, KEY_KIND
from rfdeploy.models.config import config_from_dict
from rfdeploy.runtime.backends.base import Runner
from rfdeploy.runtime.preprocess import Letterbox, preprocess


def _read(runner: Runner, want_kind: str):
    meta = runner.metadata
    kind = meta.get(KEY_KIND)
    if kind != want_kind:
        raise ModelFileError(f"expected a {want_kind} model, got {kind or 'a model without rfdeploy metadata'} ({runner.describe()})")
    try:
        return PreprocessContract.from_json(meta[KEY_CONTRACT]), config_from_dict(json.loads(meta[KEY_CONFIG]))
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"the model's rfdeploy metadata is invalid: {e}") from e


class Detector:
    """RefineFace on any backend: batched tensors in, candidate boxes (input pixels) out."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.contract, self.cfg = _read(runner, "detector")

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def max_batch(self) -> int | None:
        return self.runner.max_batch

    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.runner.infer({"image": x})
        return out["boxes"], out["scores"]

    def candidates(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One whole image -> candidate boxes in image pixels and scores."""
        x, lb = preprocess(rgb, self.contract)
        b, s = self.run_batch(x)
        return _to_image(b[0], s[0], lb)


def _to_image(boxes: np.ndarray, scores: np.ndarray, lb: Letterbox):
    keep = scores > 0
    return lb.to_image(boxes[keep]), scores[keep]


class ThirdPartyDetector:
    """A third-party ONNX detector behind an adapter (rfdeploy.runtime.adapters)."""

    max_batch = 1

    def __init__(self, onnx_detector):
        self.onnx = onnx_detector
        self.contract = onnx_detector.adapter.contract

    @property
    def name(self) -> str:
        return self.onnx.name

    def candidates(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.onnx.detect_candidates(rgb)


class Ranker:
    """CRFace on any backend: (image, candidates) -> refined scores for the top-N candidates."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.contract, self.cfg = _read(runner, "ranker")

    @property
    def num_boxes(self) -> int:
        return self.cfg.num_boxes

    def rerank(self, rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray):
        """-> (boxes, refined scores, detector scores) of the top-N candidates by detector score."""
        from rfdeploy.models.crface import pack_candidates

        h, w = rgb.shape[:2]
        cand, order = pack_candidates(boxes, scores, w, h, self.num_boxes)
        x, _ = preprocess(rgb, self.contract)
        refined = self.runner.infer({"image": x, "boxes": cand[None]})["scores"][0]
        return boxes[order], refined[: len(order)], scores[order]
