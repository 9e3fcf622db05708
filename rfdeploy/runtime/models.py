"""Model wrappers over a runner: a model is preprocess -> infer -> postprocess.

Each reads its preprocessing contract and config from the runner's model-file metadata.
"""

from __future__ import annotations

import numpy as np

from rfdeploy.core.errors import ModelFileError
from rfdeploy.core.metadata import read_config, read_contract, read_kind
from rfdeploy.core.preprocess import Letterbox
from rfdeploy.models.config import config_from_dict
from rfdeploy.runtime.backends.base import Runner
from rfdeploy.runtime.facelogic import to_host


def _feed(runner: Runner, x):
    """A batch for ``runner``: torch tensors pass to runners that take them, others get numpy."""
    if isinstance(x, np.ndarray) or runner.accepts_torch:
        return x

    return to_host(x)


def _read(runner: Runner, want_kind: str):
    meta = runner.metadata
    kind = read_kind(meta)
    if kind != want_kind:
        raise ModelFileError(f"expected a {want_kind} model, got {kind or 'a model without rfdeploy metadata'} ({runner.describe()})")
    source = runner.describe()
    try:
        return read_contract(meta, source), config_from_dict(read_config(meta, source))
    except (KeyError, TypeError, ValueError) as e:  # a config dict with unknown or invalid fields
        raise ModelFileError(f"{source}: the model's rfdeploy config is invalid: {e}") from e


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
        out = self.runner.infer({"image": _feed(self.runner, x)})
        return out["boxes"], out["scores"]

class ThirdPartyDetector:
    """A third-party ONNX detector behind an adapter (rfdeploy.runtime.adapters), given the same
    batched interface as RefineFace so tiling and merging treat both alike."""

    max_batch = None
    cfg = None

    def __init__(self, onnx_detector):
        self.onnx = onnx_detector
        self.contract = onnx_detector.adapter.contract

    @property
    def name(self) -> str:
        return self.onnx.name

    @property
    def runner(self):
        """The onnxruntime runner behind the adapter (where the network runs, as for Detector)."""
        return self.onnx.runner

    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B,3,H,W] preprocessed -> boxes [B,K,4] in input pixels, scores [B,K] (0-padded)."""

        x = to_host(x)
        h, w = x.shape[2:]
        identity = Letterbox(scale=1.0, image_size=(w, h), input_size=(w, h))
        per_row = []
        for i in range(x.shape[0]):
            outputs = self.onnx.runner.infer({self.onnx.input_name: x[i:i + 1]})
            per_row.append(self.onnx.adapter.decode(outputs, identity))
        k = max(1, max(len(s) for _, s in per_row))
        boxes = np.zeros((x.shape[0], k, 4), np.float32)
        scores = np.zeros((x.shape[0], k), np.float32)
        for i, (b, s) in enumerate(per_row):
            boxes[i, : len(s)], scores[i, : len(s)] = b, s
        return boxes, scores


class Ranker:
    """CRFace on any backend: (image, candidates) -> refined scores for the top-N candidates."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.contract, self.cfg = _read(runner, "ranker")

    @property
    def num_boxes(self) -> int:
        return self.cfg.num_boxes

    def infer(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Preprocessed image [1,3,h,w] and packed candidates [1,N,5] -> refined scores [1,N]."""
        return self.runner.infer({"image": _feed(self.runner, image), "boxes": _feed(self.runner, boxes)})["scores"]
