"""Third-party face detectors as ONNX files, described by small adapters.

CRFace re-scores any detector's pre-NMS candidates, so the runtime accepts a foreign detector as an
ONNX file plus an adapter that knows its input convention (a PreprocessContract) and how to turn its
raw outputs into boxes and scores. Built in: RetinaFace (MobileNet0.25 family, priors decoded
outside the graph), CenterFace (heatmap/scale/offset at stride 4) and SCRFD (distances from anchor
points at strides 8/16/32; an evaluation reference only, see ``SCRFDAdapter``). Detectors that
already output decoded boxes and scores are described by a small JSON file (see
``DecodedBoxesAdapter``).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rfdeploy.core.boxes import nms
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.fsutil import read_json
from rfdeploy.core.onnxinfo import (
    ModelSignature,
    load_onnx,
    make_spatial_dims_dynamic,
    read_signature,
    rename_dims,
    tensor_info,
)
from rfdeploy.core.preprocess import Letterbox, preprocess
from rfdeploy.runtime.backends.ort_runner import OrtRunner

DEFAULT_SCORE_THRESHOLD = 0.02
DEFAULT_MAX_CANDIDATES = 5000

# --------------------------------------------------------------------------------------------
# Adapters


class DetectorAdapter(ABC):
    """How to feed a third-party detector and decode its raw outputs into candidate boxes.

    ``decode`` returns every candidate above ``score_threshold`` (pre-NMS), highest score first,
    at most ``max_candidates``, as boxes [K,4] x1,y1,x2,y2 in source-image pixels and scores [K].
    """

    name: str = "adapter"
    # True when the weights' licence allows evaluation only: such a detector must not label
    # training data or train anything that ships (callers that train check this).
    evaluation_only: bool = False

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        long_side: int | None = None,
    ):
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        if long_side is not None and long_side < 32:
            raise ValueError(f"long_side must be >= 32 pixels, got {long_side}")
        self.score_threshold = float(score_threshold)
        self.max_candidates = int(max_candidates)
        self.long_side = long_side

    # The input convention without resizing; ``contract`` adds the optional long-side resize.
    @property
    @abstractmethod
    def base_contract(self) -> PreprocessContract: ...

    @property
    def contract(self) -> PreprocessContract:
        c = self.base_contract
        if self.long_side is None:
            return c
        return PreprocessContract(**{**c.to_dict(), "resize": "long_side", "resize_to": self.long_side})

    @property
    def input_size_policy(self) -> int:
        """The input tensor's height and width are padded to a multiple of this."""
        return self.contract.pad_multiple

    @classmethod
    def recognises(cls, signature: ModelSignature) -> bool:
        """Whether a model with this signature looks like this adapter's detector."""
        return False

    def check(self, signature: ModelSignature) -> None:
        """Raise ModelFileError if the model lacks what ``decode`` needs."""

    def prepare_model(self, model, input_name: str):
        """Fix up the loaded ONNX model before a session is created (default: unchanged)."""
        return model

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return preprocess(rgb, self.contract)

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], letterbox: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        ...

    def finish(
        self, boxes_input_px: np.ndarray, scores: np.ndarray, letterbox: Letterbox
    ) -> tuple[np.ndarray, np.ndarray]:
        """Threshold, map input-tensor boxes to image pixels, sort descending, cap.

        Boxes left with no area after clipping to the image (they lay in the padding) are dropped.
        """
        scores = np.asarray(scores, np.float32).reshape(-1)
        boxes_input_px = np.asarray(boxes_input_px, np.float32).reshape(-1, 4)
        keep = np.flatnonzero(scores >= self.score_threshold)
        boxes, scores = letterbox.to_image(boxes_input_px[keep]), scores[keep]
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[inside], scores[inside]
        order = np.argsort(-scores, kind="stable")[: self.max_candidates]
        return boxes[order].astype(np.float32), scores[order]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(score_threshold={self.score_threshold}, "
            f"max_candidates={self.max_candidates}, long_side={self.long_side})"
        )


def _squeeze_batch(a: np.ndarray, rank: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == rank + 1:
        if a.shape[0] != 1:
            raise ModelFileError(f"{what}: expected batch size 1, got shape {a.shape}")
        a = a[0]
    if a.ndim != rank:
        raise ModelFileError(f"{what}: expected {rank} dims (plus batch), got shape {a.shape}")
    return a


@lru_cache(maxsize=16)
def retinaface_priors(
    width: int,
    height: int,
    steps: tuple[int, ...] = (8, 16, 32),
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512)),
) -> np.ndarray:
    """Square priors [N,4] as cx, cy, size, size in input pixels, in the network's output order.

    Per level: rows, then columns, then the level's sizes; centres at (index + 0.5) * step.
    """
    parts = []
    for step, sizes in zip(steps, min_sizes):
        ny, nx = math.ceil(height / step), math.ceil(width / step)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * step, (ys.ravel() + 0.5) * step], axis=1)
        centres = np.repeat(centres, len(sizes), axis=0)
        wh = np.tile(np.asarray(sizes, np.float64), nx * ny)[:, None].repeat(2, axis=1)
        parts.append(np.concatenate([centres, wh], axis=1))
    priors = np.concatenate(parts, axis=0).astype(np.float32)
    priors.setflags(write=False)
    return priors


class RetinaFaceAdapter(DetectorAdapter):
    """RetinaFace with priors decoded outside the graph (outputs ``loc``, ``conf``, ``landmarks``).

    BGR input minus the mean (104, 117, 123), no scaling; SSD-style deltas with variances 0.1/0.2.
    """

    name = "retinaface"
    steps = (8, 16, 32)
    min_sizes = ((16, 32), (64, 128), (256, 512))
    variances = (0.1, 0.2)
    loc_name, conf_name = "loc", "conf"

    @property
    def base_contract(self) -> PreprocessContract:
        return PreprocessContract(
            mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR", pad_multiple=32
        )

    @classmethod
    def recognises(cls, signature: ModelSignature) -> bool:
        loc, conf = signature.output(cls.loc_name), signature.output(cls.conf_name)
        return (
            len(signature.inputs) == 1
            and loc is not None
            and conf is not None
            and len(loc.shape) == 3
            and len(conf.shape) == 3
        )

    def check(self, signature: ModelSignature) -> None:
        if not self.recognises(signature):
            raise ModelFileError(
                f"not a RetinaFace model: expected one image input and 3-D outputs "
                f"{self.loc_name!r} and {self.conf_name!r} ({signature.describe()})"
            )

    def decode(self, outputs, letterbox):
        loc = _squeeze_batch(outputs[self.loc_name], 2, "RetinaFace loc")
        conf = _squeeze_batch(outputs[self.conf_name], 2, "RetinaFace conf")
        width, height = letterbox.input_size
        priors = retinaface_priors(width, height, self.steps, self.min_sizes)
        if loc.shape != (len(priors), 4) or conf.shape[0] != len(priors):
            raise ModelFileError(
                f"RetinaFace outputs {loc.shape}/{conf.shape} do not match the {len(priors)} priors "
                f"of a {width}x{height} input (steps {self.steps}, sizes {self.min_sizes})"
            )
        scores = conf[:, -1]  # softmax over (background, face)
        keep = np.flatnonzero(scores >= self.score_threshold)
        d, p = loc[keep].astype(np.float32), priors[keep]
        centre = p[:, :2] + d[:, :2] * self.variances[0] * p[:, 2:]
        size = p[:, 2:] * np.exp(d[:, 2:] * self.variances[1])
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        return self.finish(boxes, scores[keep], letterbox)


class CenterFaceAdapter(DetectorAdapter):
    """CenterFace: stride-4 maps of face-centre heat, log box size and sub-cell centre offset.

    Outputs (channels): heatmap (1), scale (2: log(h/4), log(w/4)), offset (2: dy, dx), landmarks
    (10). Raw 0..255 pixels in; the export fixes its input to a placeholder size, rewritten here.
    """

    name = "centerface"
    stride = 4

    def __init__(self, *args, channel_order: str = "RGB", **kwargs):
        super().__init__(*args, **kwargs)
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {channel_order!r}")
        self.channel_order = channel_order
        self.heatmap_name = self.scale_name = self.offset_name = ""

    @property
    def base_contract(self) -> PreprocessContract:
        return PreprocessContract(
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order=self.channel_order, pad_multiple=32
        )

    @staticmethod
    def _heads(signature: ModelSignature) -> tuple[str, str, str] | None:
        """(heatmap, scale, offset) output names, found by channel counts 1, 2, 2 (+10 landmarks)."""
        if len(signature.inputs) != 1 or len(signature.outputs) != 4:
            return None
        if any(len(t.shape) != 4 for t in signature.outputs):
            return None
        channels = [t.shape[1] for t in signature.outputs]
        if sorted(channels, key=str) != sorted([1, 2, 2, 10], key=str):
            return None
        heat = next(t.name for t in signature.outputs if t.shape[1] == 1)
        scale, offset = (t.name for t in signature.outputs if t.shape[1] == 2)  # export order
        return heat, scale, offset

    @classmethod
    def recognises(cls, signature: ModelSignature) -> bool:
        return cls._heads(signature) is not None

    def check(self, signature: ModelSignature) -> None:
        heads = self._heads(signature)
        if heads is None:
            raise ModelFileError(
                "not a CenterFace model: expected one image input and four 4-D outputs with "
                f"1, 2, 2 and 10 channels ({signature.describe()})"
            )
        self.heatmap_name, self.scale_name, self.offset_name = heads

    def prepare_model(self, model, input_name: str):
        return make_spatial_dims_dynamic(model, input_name)

    def decode(self, outputs, letterbox):
        if not self.heatmap_name:
            raise RuntimeError("CenterFaceAdapter.check(signature) must run before decode")
        heat = _squeeze_batch(outputs[self.heatmap_name], 3, "CenterFace heatmap")[0]
        scale = _squeeze_batch(outputs[self.scale_name], 3, "CenterFace scale")
        offset = _squeeze_batch(outputs[self.offset_name], 3, "CenterFace offset")
        ys, xs = np.nonzero(heat >= self.score_threshold)
        s = self.stride
        h = np.exp(scale[0, ys, xs].astype(np.float32)) * s
        w = np.exp(scale[1, ys, xs].astype(np.float32)) * s
        cy = (ys + offset[0, ys, xs] + 0.5) * s
        cx = (xs + offset[1, ys, xs] + 0.5) * s
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return self.finish(boxes, heat[ys, xs], letterbox)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", channel_order={self.channel_order!r})"


def _constant_value(model, name: str) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def resize_sizes_to_scales(model) -> int:
    """Turn Resize nodes that fix their output ``sizes`` into ones that give ``scales`` instead.

    An export traced at one input size bakes that size into every upsampling; with the same
    factors as scales the graph takes other input sizes. The factors come from the traced shapes,
    so the model must still have its fixed input size when this runs. Returns how many nodes were
    rewritten (0: nothing to do, e.g. a file rewritten before).
    """
    import onnx
    from onnx import numpy_helper

    fixed = [n for n in model.graph.node if n.op_type == "Resize" and len(n.input) >= 4 and n.input[3]]
    if not fixed:
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: tensor_info(v).shape
              for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    taken = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    sizes_names = {n.input[3] for n in fixed}
    for k, node in enumerate(fixed):
        label = node.name or f"#{k}"
        sizes = _constant_value(model, node.input[3])
        in_shape = shapes.get(node.input[0])
        if sizes is None or in_shape is None or not all(isinstance(d, int) and d > 0 for d in in_shape):
            raise ModelFileError(
                f"Resize node {label}: its sizes or its input shape are not known constants "
                f"(sizes {None if sizes is None else sizes.tolist()}, input {in_shape}), so they "
                "cannot become scales; run this on the model as exported, with its fixed input size"
            )
        if sizes.shape != (len(in_shape),):
            raise ModelFileError(f"Resize node {label}: sizes {sizes.tolist()} do not fit its input {in_shape}")
        scales = np.asarray(sizes, np.float64) / np.asarray(in_shape, np.float64)
        name = f"{node.name or 'resize'}_{k}_scales"
        while name in taken:
            name += "_"
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(scales.astype(np.float32), name))
        x, roi = node.input[0], node.input[1]
        if not roi:  # opset 11 needs the roi input even when it is unused
            roi = name + "_roi"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), roi))
        del node.input[:]
        node.input.extend([x, roi, name])  # sizes omitted: Resize takes scales or sizes, not both
    used = {i for n in model.graph.node for i in n.input}
    orphans = [i for i in model.graph.initializer if i.name not in used and i.name in sizes_names]
    for init in orphans:
        model.graph.initializer.remove(init)
    return len(fixed)


def make_scrfd_dynamic(model, input_name: str):
    """SCRFD's export fixes its input to 1x3x640x640 and its upsampling to the matching sizes:
    rewrite the upsampling as scales and free the input's height and width (batch stays 1: the
    head reshapes hard-code it). Height and width must then be multiples of the largest stride."""
    resize_sizes_to_scales(model)
    image_inputs = [v for v in model.graph.input if v.name == input_name]
    if not image_inputs:
        raise ModelFileError(f"the model has no input named {input_name!r}")
    rename_dims(image_inputs[0], {2: "height", 3: "width"})
    for out in model.graph.output:
        if len(out.type.tensor_type.shape.dim) == 3:
            rename_dims(out, {1: f"{out.name}_anchors"})
    del model.graph.value_info[:]  # stale intermediate shapes would contradict other input sizes
    return model


class SCRFDAdapter(DetectorAdapter):
    """SCRFD (InsightFace): per stride s, sigmoid scores ``score_s`` [N,1] and distances
    ``bbox_s`` [N,4] (left, top, right, bottom in units of s) from anchor points, optionally
    ``kps_s`` (landmarks, unused). Points sit at (column * s, row * s), row-major, each repeated
    once per anchor. RGB input, (pixel - 127.5) / 128.

    InsightFace's pretrained SCRFD weights are licensed for non-commercial research: use the model
    as an evaluation reference only (``evaluation_only``), never as a teacher for shipped weights.
    """

    name = "scrfd"
    evaluation_only = True
    score_prefix, bbox_prefix = "score_", "bbox_"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.strides: tuple[int, ...] = ()

    @property
    def base_contract(self) -> PreprocessContract:
        # Padded to the largest stride so every level's upsampling meets its lateral map exactly.
        return PreprocessContract(
            mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0), channel_order="RGB",
            pad_multiple=max(self.strides or (32,)),
        )

    @classmethod
    def _strides(cls, signature: ModelSignature) -> tuple[int, ...] | None:
        """Strides s that have both ``score_s`` [..,N,1] and ``bbox_s`` [..,N,4] outputs."""
        if len(signature.inputs) != 1:
            return None
        strides = []
        for t in signature.outputs:
            suffix = t.name[len(cls.score_prefix):]
            if not (t.name.startswith(cls.score_prefix) and suffix.isdigit() and int(suffix) > 0):
                continue
            box = signature.output(cls.bbox_prefix + suffix)
            if box is None or len(t.shape) not in (2, 3) or len(box.shape) != len(t.shape):
                return None
            if t.shape[-1] != 1 or box.shape[-1] != 4:
                return None
            strides.append(int(suffix))
        return tuple(sorted(strides)) or None

    @classmethod
    def recognises(cls, signature: ModelSignature) -> bool:
        return cls._strides(signature) is not None

    def check(self, signature: ModelSignature) -> None:
        strides = self._strides(signature)
        if strides is None:
            raise ModelFileError(
                "not an SCRFD model: expected one image input and outputs score_S [N,1] and "
                f"bbox_S [N,4] for each stride S ({signature.describe()})"
            )
        self.strides = strides

    def prepare_model(self, model, input_name: str):
        return make_scrfd_dynamic(model, input_name)

    def decode(self, outputs, letterbox):
        if not self.strides:
            raise RuntimeError("SCRFDAdapter.check(signature) must run before decode")
        width, height = letterbox.input_size
        boxes, scores = [], []
        for s in self.strides:
            score = np.asarray(outputs[f"{self.score_prefix}{s}"], np.float32)
            dist = np.asarray(outputs[f"{self.bbox_prefix}{s}"], np.float32)
            score = _squeeze_batch(score, 2, f"SCRFD score_{s}")[:, 0] if score.ndim == 3 else score.reshape(-1)
            dist = _squeeze_batch(dist, 2, f"SCRFD bbox_{s}") if dist.ndim == 3 else dist
            rows, cols = height // s, width // s
            anchors = len(score) // max(1, rows * cols)
            if anchors < 1 or len(score) != rows * cols * anchors or dist.shape != (len(score), 4):
                raise ModelFileError(
                    f"SCRFD stride {s}: outputs {score.shape}/{dist.shape} do not fit a {width}x{height} "
                    f"input ({rows}x{cols} points per anchor; pad to a multiple of {max(self.strides)})"
                )
            keep = np.flatnonzero(score >= self.score_threshold)
            cell = keep // anchors
            px, py = (cell % cols) * float(s), (cell // cols) * float(s)
            d = dist[keep] * s
            boxes.append(np.stack([px - d[:, 0], py - d[:, 1], px + d[:, 2], py + d[:, 3]], axis=1))
            scores.append(score[keep])
        return self.finish(np.concatenate(boxes), np.concatenate(scores), letterbox)


def require_trainable(adapter: DetectorAdapter, use: str) -> None:
    """Refuse a detector whose licence allows evaluation only for ``use`` (e.g. "label training
    data"): its outputs must not end up in weights that ship."""
    if adapter.evaluation_only:
        raise InputError(
            f"the {adapter.name} detector's weights are licensed for evaluation only: it cannot {use}",
            hint="evaluate with it (rfdeploy eval, benchmarks/eval_dev.py); pick a detector whose licence allows training",
        )


BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


class DecodedBoxesAdapter(DetectorAdapter):
    """A detector whose graph already outputs decoded boxes [N,4] and scores [N] (or [N,C]).

    Boxes are in input-tensor pixels, or in 0..1 of the input tensor when ``normalized``.
    """

    def __init__(
        self,
        boxes_output: str,
        scores_output: str,
        box_format: str = "xyxy",
        normalized: bool = False,
        score_index: int | None = None,
        contract: PreprocessContract | None = None,
        dynamic_input: bool = False,
        name: str = "decoded-boxes",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
        if not boxes_output or not scores_output:
            raise ValueError("boxes_output and scores_output must name model outputs")
        self.name = name
        self.boxes_output, self.scores_output = boxes_output, scores_output
        self.box_format, self.normalized = box_format, bool(normalized)
        self.score_index = score_index
        self._contract = contract or PreprocessContract()
        self.dynamic_input = bool(dynamic_input)

    @property
    def base_contract(self) -> PreprocessContract:
        return self._contract

    def check(self, signature: ModelSignature) -> None:
        names = [t.name for t in signature.outputs]
        missing = [n for n in (self.boxes_output, self.scores_output) if n not in names]
        if missing or len(signature.inputs) != 1:
            raise ModelFileError(
                f"adapter {self.name!r} needs one image input and outputs {self.boxes_output!r}, "
                f"{self.scores_output!r} ({signature.describe()})"
            )

    def prepare_model(self, model, input_name: str):
        return make_spatial_dims_dynamic(model, input_name) if self.dynamic_input else model

    def decode(self, outputs, letterbox):
        boxes = np.asarray(outputs[self.boxes_output], np.float32)
        if boxes.ndim == 3:
            boxes = _squeeze_batch(boxes, 2, f"output {self.boxes_output!r}")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ModelFileError(f"output {self.boxes_output!r}: expected [N,4] boxes, got {boxes.shape}")
        scores = np.asarray(outputs[self.scores_output], np.float32)
        if scores.ndim >= 2 and scores.shape[0] == 1 and scores.shape[1] == len(boxes) and len(boxes) != 1:
            scores = scores[0]
        if scores.ndim == 2:
            if self.score_index is not None:
                scores = scores[:, self.score_index]
            elif scores.shape[1] == 1:
                scores = scores[:, 0]
            else:
                raise ModelFileError(
                    f"output {self.scores_output!r} has {scores.shape[1]} columns: set score_index"
                )
        scores = scores.reshape(-1)
        if len(scores) != len(boxes):
            raise ModelFileError(f"{len(boxes)} boxes but {len(scores)} scores")
        if self.box_format == "xywh":
            boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        elif self.box_format == "cxcywh":
            boxes = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
        if self.normalized:
            w, h = letterbox.input_size
            boxes = boxes * np.asarray([w, h, w, h], np.float32)
        return self.finish(boxes, scores, letterbox)


ADAPTERS: dict[str, type[DetectorAdapter]] = {
    RetinaFaceAdapter.name: RetinaFaceAdapter,
    CenterFaceAdapter.name: CenterFaceAdapter,
    SCRFDAdapter.name: SCRFDAdapter,
}

_JSON_KEYS = {
    "name", "boxes_output", "scores_output", "box_format", "normalized", "score_index",
    "contract", "dynamic_input", "score_threshold", "max_candidates", "long_side",
}


def load_adapter_json(path: str | os.PathLike) -> DecodedBoxesAdapter:
    """Read a detector description such as

    ``{"boxes_output": "boxes", "scores_output": "scores", "box_format": "xywh",
    "normalized": true, "contract": {"mean": [0,0,0], "std": [255,255,255]}}``.
    """
    path = Path(path)
    spec = read_json(path, "adapter file", ModelFileError)
    if not isinstance(spec, dict):
        raise ModelFileError(f"adapter file {path} must hold a JSON object")
    unknown = set(spec) - _JSON_KEYS
    if unknown:
        raise ModelFileError(
            f"adapter file {path}: unknown keys {sorted(unknown)}", hint=f"known keys: {sorted(_JSON_KEYS)}"
        )
    try:
        if "contract" in spec:
            spec["contract"] = PreprocessContract.from_dict(spec["contract"])
        return DecodedBoxesAdapter(**spec)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"adapter file {path}: {e}") from e


def resolve_adapter(adapter: str | os.PathLike | DetectorAdapter | None, signature: ModelSignature,
                    **options: Any) -> DetectorAdapter:
    """Pick an adapter: an instance as is, a known name, a JSON file, or by recognising the model."""
    if isinstance(adapter, DetectorAdapter):
        if options:
            raise ValueError("adapter options go to the adapter's constructor, not with an instance")
        chosen = adapter
    elif adapter is None:
        matches = [cls for cls in ADAPTERS.values() if cls.recognises(signature)]
        if len(matches) != 1:
            raise ModelFileError(
                "unrecognised detector model: " + signature.describe()
                if not matches
                else f"the model fits several adapters {[c.name for c in matches]}: {signature.describe()}",
                hint=f"pass adapter= one of {sorted(ADAPTERS)} or a JSON adapter file",
            )
        chosen = matches[0](**options)
    elif str(adapter) in ADAPTERS:
        chosen = ADAPTERS[str(adapter)](**options)
    elif str(adapter).endswith(".json") or Path(adapter).is_file():
        chosen = load_adapter_json(adapter)
        if options:
            raise ValueError("set options of a JSON adapter inside its file")
    else:
        raise ModelFileError(
            f"unknown adapter {str(adapter)!r}", hint=f"use one of {sorted(ADAPTERS)} or a .json file"
        )
    chosen.check(signature)
    return chosen


# --------------------------------------------------------------------------------------------
# Running a third-party detector


class OnnxDetector:
    """A third-party ONNX face detector run with onnxruntime, decoded by an adapter.

    ``adapter``: None (recognise the model), "retinaface", "centerface", "scrfd", a JSON adapter file, or a
    DetectorAdapter. ``adapter_options`` (score_threshold, max_candidates, long_side, ...) go to the
    adapter's constructor when it is named or recognised. ``threads``: onnxruntime intra-op threads
    (None: its default). ``device``: "cpu" or "cuda[:i]" (onnxruntime's CUDA provider), unless
    ``providers`` names them.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        adapter: str | os.PathLike | DetectorAdapter | None = None,
        providers: list[str] | None = None,
        *,
        threads: int | None = None,
        device: str = "cpu",
        **adapter_options: Any,
    ):
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ModelFileError(f"detector model not found: {self.path}")
        model = load_onnx(self.path)
        self.signature = read_signature(model)
        self.adapter = resolve_adapter(adapter, self.signature, **adapter_options)
        if len(self.signature.inputs) != 1:
            raise ModelFileError(f"expected one image input: {self.signature.describe()}")
        self.input_name = self.signature.inputs[0].name
        model = self.adapter.prepare_model(model, self.input_name)
        # the same onnxruntime runner as rfdeploy's own models (providers, threads, errors)
        # providers: as given, else the best for ``device`` (CPU only for "cpu")
        self.runner = OrtRunner(self.path, device=device, threads=threads, model=model,
                                providers=list(providers) if providers else None, rfdeploy_model=False)
        self.session = self.runner.session
        self.output_names = self.runner.output_names

    @property
    def name(self) -> str:
        return self.adapter.name

    def _run(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], Letterbox]:
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            shape = getattr(rgb, "shape", None)
            raise InputError(f"expected an HxWx3 uint8 RGB image, got {shape} {getattr(rgb, 'dtype', type(rgb))}")
        if min(rgb.shape[:2]) < 1:
            raise InputError(f"empty image {rgb.shape}")
        tensor, letterbox = self.adapter.preprocess(rgb)
        return self.runner.infer({self.input_name: tensor}), letterbox

    def detect_candidates(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All pre-NMS candidates: boxes [K,4] x1,y1,x2,y2 image pixels, scores [K], descending."""
        outputs, letterbox = self._run(rgb)
        return self.adapter.decode(outputs, letterbox)

    def detect(self, rgb: np.ndarray, nms_iou: float = 0.4, score_thr: float = 0.5) -> Detections:
        """Final detections: candidates at or above ``score_thr`` after NMS, highest score first."""
        boxes, scores = self.detect_candidates(rgb)
        keep = scores >= score_thr
        boxes, scores = boxes[keep], scores[keep]
        kept = nms(boxes, scores, iou=nms_iou)
        return Detections(boxes[kept], scores[kept])

    def __repr__(self) -> str:
        return f"OnnxDetector({str(self.path)!r}, adapter={self.adapter!r})"
