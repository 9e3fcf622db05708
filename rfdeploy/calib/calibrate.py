"""FP32 ONNX + calibration images -> explicit Q/DQ INT8 ONNX that TensorRT accepts.

TensorRT 11 and TensorRT-RTX have no INT8 calibrator: INT8 is decided in the ONNX file with
QuantizeLinear/DequantizeLinear nodes. They are made with onnxruntime's ``quantize_static`` in QDQ
format: signed int8 activations and weights, symmetric (zero-point 0), per-channel weights, and
biases left in float (``QuantizeBias=False``: TensorRT's parser rejects int32 bias DQ, FACTS.md).
Only Conv/Gemm/MatMul are quantized; the post-network region (rfdeploy.export.graph_regions:
Sigmoid, STC filter, Exp decode, anchors, TopK, box-coordinate inputs) stays float, and the Q/DQ
onnxruntime places on the heads' last Conv outputs is removed so logits reach the Sigmoid unrounded.

Calibration inputs go through the runtime's own preprocessing (rfdeploy.runtime.preprocess) with
the contract stored in the model. To stack into fixed-shape batches, every image is first resized
so its long side is ``calib_size`` (models with a ``long_side`` contract are resized by the contract
itself, to ``resize_to``), then letterboxed by ``preprocess`` onto a square canvas of the padded
size (bottom/right padding with the mean colour, exactly as at run time).

Ranker models (a second input ``boxes`` [B, N, 5] in the ranker's own format: rows x, y, w, h
normalised by the source image width/height, score; sorted by score descending, zero-padded, as
made by rfdeploy.models.crface.pack_candidates) also need candidates: ``boxes_fn(tensor, letterbox)
-> (N, 5)`` provides them in that format, or synthetic detector candidates are drawn in source-image
pixels (face-like aspect, log-uniform sizes inside the image, low-skewed scores, a random number of
them so the zero padding is seen too; seeded per image so runs repeat) and packed by
``pack_candidates``, the function every runtime backend uses.

The tensor ranges are cached in ``cache_dir`` as JSON, keyed by the sha256 of: the model bytes, the
sorted hashes of the image files used, the contract JSON, the method, ``num``, ``calib_size``, the
quantized op types, the box source and the onnxruntime version. The key is in the file name and
is checked against the key stored inside; a file that does not match is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rfdeploy.calib.images import list_image_files, load_rgb, spread_order
from rfdeploy.calib.qdq import qdq_problems, unquantize_region_inputs
from rfdeploy.contract import METADATA_KEY, PreprocessContract
from rfdeploy.errors import BuildError, InputError, ModelFileError
from rfdeploy.export.graph_regions import (
    SENSITIVE_OPS,
    ensure_node_names,
    find_fp32_region,
)
from rfdeploy.export.precision_io import (
    PRECISION_KEY,
    check_node_names,
    check_not_reduced,
    load_onnx,
    read_metadata,
    save_onnx_atomic,
    sha256_file,
    write_metadata,
)
from rfdeploy.fsutil import atomic_write_bytes
from rfdeploy.runtime.preprocess import Letterbox, padded_size, preprocess

METHODS = ("max", "entropy", "percentile")
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul")
DEFAULT_EXCLUDE_OPS = SENSITIVE_OPS
CACHE_FORMAT = 1
SYNTHETIC_BOXES = "synthetic-packed-v2"
METHOD_KEY = "rfdeploy.calibration.method"
CACHE_KEY_KEY = "rfdeploy.calibration.key"

BoxesFn = Callable[[np.ndarray, Letterbox], np.ndarray]


@dataclass
class CalibrationReport:
    src: str
    dst: str
    method: str
    num_requested: int
    num_used: int
    images: list[str]
    calib_shape: tuple[int, int]  # (height, width) of the calibration tensors
    cache_key: str
    cache_file: str | None
    cache_hit: bool
    quantized_nodes: int
    excluded_nodes: int
    float_region_inputs_restored: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- inputs


def read_contract(model: onnx.ModelProto, path: str | os.PathLike) -> PreprocessContract:
    raw = read_metadata(model).get(METADATA_KEY)
    if raw is None:
        raise ModelFileError(
            f"{path} has no preprocessing contract ({METADATA_KEY} in metadata_props)",
            hint="export the model with rfdeploy so its preprocessing is recorded",
        )
    try:
        return PreprocessContract.from_json(raw)
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path} has an invalid preprocessing contract: {e}") from e


@dataclass(frozen=True)
class _ModelInputs:
    image: str
    boxes: str | None
    num_boxes: int | None  # static N of the boxes input, if any


def _model_inputs(model: onnx.ModelProto, path: str | os.PathLike) -> _ModelInputs:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]

    def rank(vi):
        return len(vi.type.tensor_type.shape.dim)

    if not inputs or rank(inputs[0]) != 4:
        raise ModelFileError(f"{path}: the first input must be an image [B,3,H,W]")
    if len(inputs) == 1:
        return _ModelInputs(inputs[0].name, None, None)
    if len(inputs) == 2 and rank(inputs[1]) == 3:
        dim = inputs[1].type.tensor_type.shape.dim[1]
        return _ModelInputs(inputs[0].name, inputs[1].name, dim.dim_value if dim.HasField("dim_value") else None)
    raise ModelFileError(f"{path}: unsupported inputs {[i.name for i in inputs]} (expected image [, boxes])")


def synthetic_candidates(width: float, height: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible pre-NMS detector candidates in source-image pixels: ``(boxes xyxy (k, 4), scores (k,))``
    with ``n // 4 <= k <= n`` (so packed inputs also show zero padding)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(max(1, n // 4), n + 1))
    longest = max(8.0, 0.5 * min(width, height))
    bw = np.exp(rng.uniform(np.log(4.0), np.log(longest), k))
    bh = bw * rng.uniform(1.0, 1.5, k)  # faces are a bit taller than wide
    cx, cy = rng.uniform(0, width, k), rng.uniform(0, height, k)
    x1, y1 = np.clip(cx - bw / 2, 0, width), np.clip(cy - bh / 2, 0, height)
    x2, y2 = np.clip(cx + bw / 2, 0, width), np.clip(cy + bh / 2, 0, height)
    # most candidates are weak, as before NMS; strictly positive (a zero score marks a padded row)
    score = np.maximum(rng.uniform(0, 1, k) ** 2, 1e-3)
    return np.stack([x1, y1, x2, y2], 1).astype(np.float32), score.astype(np.float32)


def synthetic_boxes(letterbox: Letterbox, n: int, seed: int) -> np.ndarray:
    """A ranker ``boxes`` input (n, 5) for one image: synthetic candidates packed by
    ``pack_candidates`` (x, y, w, h normalised by the source image size, score; sorted, zero-padded)."""
    from rfdeploy.models.crface import pack_candidates

    w, h = letterbox.image_size
    boxes, scores = synthetic_candidates(w, h, n, seed)
    packed, _ = pack_candidates(boxes, scores, w, h, n)
    return packed


def calibration_canvas(contract: PreprocessContract, calib_size: int) -> int:
    side = contract.resize_to if contract.resize == "long_side" else calib_size
    return padded_size(side, side, contract.pad_multiple)[0]


def prepare_image(path: Path, contract: PreprocessContract, calib_size: int) -> tuple[np.ndarray, Letterbox]:
    """One calibration tensor (1x3xSxS) through the runtime preprocessing."""
    from PIL import Image

    rgb = load_rgb(path)
    if contract.resize == "none":
        h, w = rgb.shape[:2]
        s = calib_size / max(h, w)
        if s != 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    side = calibration_canvas(contract, calib_size)
    return preprocess(rgb, contract, min_size=(side, side))


class _Reader:
    """onnxruntime CalibrationDataReader: feeds preprocessed batches, decoding lazily."""

    def __init__(self, files, contract, calib_size, inputs: _ModelInputs, batch_size, boxes_fn, num_boxes):
        self._files, self._contract, self._size = files, contract, calib_size
        self._inputs, self._batch, self._boxes_fn, self._num_boxes = inputs, batch_size, boxes_fn, num_boxes
        self._pos = 0

    def get_next(self):
        if self._pos >= len(self._files):
            return None
        chunk = self._files[self._pos : self._pos + self._batch]
        start = self._pos
        self._pos += len(chunk)
        tensors, boxes = [], []
        for k, path in enumerate(chunk):
            x, lb = prepare_image(path, self._contract, self._size)
            tensors.append(x)
            if self._inputs.boxes is not None:
                b = self._boxes_fn(x, lb) if self._boxes_fn else synthetic_boxes(lb, self._num_boxes, start + k)
                boxes.append(np.asarray(b, np.float32)[None])
        feed = {self._inputs.image: np.concatenate(tensors, 0)}
        if self._inputs.boxes is not None:
            if len({b.shape for b in boxes}) != 1:
                raise InputError("boxes_fn must return the same number of boxes for every image")
            feed[self._inputs.boxes] = np.concatenate(boxes, 0)
        return feed

    def __len__(self):
        return len(self._files)


def select_images(images, num: int, allow_fewer: bool) -> tuple[list[Path], list[str]]:
    """Up to ``num`` decodable images spread over the sorted list, and warnings for skipped files."""
    if num < 1:
        raise ValueError("num must be >= 1")
    files = list_image_files(images)
    chosen, warnings = [], []
    for i in spread_order(len(files), num):
        if len(chosen) == num:
            break
        try:
            load_rgb(files[i])
        except InputError as e:
            warnings.append(f"skipped: {e}")
            continue
        chosen.append(files[i])
    if not chosen:
        raise InputError(f"no readable calibration image among {len(files)} file(s)", hint="; ".join(warnings[:3]))
    if len(chosen) < num:
        msg = f"only {len(chosen)} readable calibration image(s), {num} requested"
        if not allow_fewer:
            raise InputError(msg, hint="add images, lower num, or pass allow_fewer=True")
        warnings.append(msg)
    return sorted(chosen), warnings


# ---------------------------------------------------------------- cache


def cache_key_parts(
    model_sha256: str, image_sha256: list[str], contract: PreprocessContract, method: str, num: int,
    calib_size: int, op_types, boxes_source: str | None,
) -> dict:
    import onnxruntime

    return {
        "format": CACHE_FORMAT,
        "model_sha256": model_sha256,
        "images_sha256": sorted(image_sha256),
        "contract": contract.to_json(),
        "method": method,
        "num": num,
        "calib_size": calib_size,
        "op_types": sorted(op_types),
        "boxes": boxes_source,
        "onnxruntime": onnxruntime.__version__,
    }


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"rfdeploy-calib-{key}.json"


def _load_cache(path: Path, key: str, parts: dict) -> tuple[dict | None, str | None]:
    """(tensor ranges, None) when the file is valid for this key, else (None, why not)."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable calibration cache {path.name} ignored ({e})"
    if not isinstance(data, dict) or data.get("key") != key or data.get("key_parts") != parts:
        return None, f"calibration cache {path.name} does not match its key and was recomputed"
    if not isinstance(data.get("ranges"), dict):
        return None, f"calibration cache {path.name} holds no ranges and was recomputed"
    return data["ranges"], None


def _write_cache(path: Path, key: str, parts: dict, ranges: dict) -> None:
    atomic_write_bytes(path, json.dumps({"key": key, "key_parts": parts, "ranges": ranges}).encode())


# ---------------------------------------------------------------- main


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def calibrate(
    src_onnx: str | os.PathLike,
    images: str | os.PathLike | list,
    dst_onnx: str | os.PathLike,
    *,
    num: int = 256,
    method: str = "max",
    cache_dir: str | os.PathLike | None = None,
    exclude_ops: set[str] | frozenset[str] = DEFAULT_EXCLUDE_OPS,
    exclude_nodes: set[str] | None = None,
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES,
    calib_size: int = 640,
    batch_size: int = 1,
    allow_fewer: bool = False,
    boxes_fn: BoxesFn | None = None,
    num_boxes: int = 256,
    percentile: float = 99.999,
) -> CalibrationReport:
    """Write an explicit Q/DQ INT8 version of ``src_onnx`` calibrated on ``images`` (see module doc).

    ``images``: a folder (its image files, sorted) or a list of files; ``num`` of them are used,
    spread over the sorted list. ``method``: "max" (min/max), "entropy" or "percentile".
    ``num_boxes``: candidates per image for a ranker when its boxes input has no fixed size.

    Raises InputError (missing/unreadable images, fewer than ``num`` without ``allow_fewer``,
    missing model file, unknown node in ``exclude_nodes``), ModelFileError (not ONNX, no contract, already reduced precision),
    BuildError (quantization failed or produced a model TensorRT would refuse). ``dst_onnx`` is
    written atomically: on any error it is left as it was.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if calib_size < 1 or batch_size < 1 or num_boxes < 1:
        raise ValueError("calib_size, batch_size and num_boxes must be >= 1")
    model = load_onnx(src_onnx)
    check_not_reduced(model, src_onnx)
    contract = read_contract(model, src_onnx)
    inputs = _model_inputs(model, src_onnx)
    metadata = read_metadata(model)
    files, warnings = select_images(images, num, allow_fewer)
    if inputs.boxes is not None:
        num_boxes = inputs.num_boxes or num_boxes

    check_node_names(model, exclude_nodes, "exclude_nodes")
    ensure_node_names(model)
    try:
        region = find_fp32_region(
            onnx.shape_inference.infer_shapes(model), image_input=inputs.image,
            sensitive_ops=frozenset(exclude_ops), extra_nodes=frozenset(exclude_nodes or ()),
        )
    except ValueError as e:
        raise BuildError(f"cannot analyse {src_onnx}: {e}") from e
    excluded = set(region.nodes)

    boxes_source = None if inputs.boxes is None else (SYNTHETIC_BOXES if boxes_fn is None else "callable")
    parts = cache_key_parts(
        sha256_file(src_onnx), [sha256_file(p) for p in files], contract, method, num, calib_size,
        op_types, boxes_source if boxes_source != "callable" else None,
    )
    key = cache_key(parts)
    # A user callable cannot be fingerprinted, so its ranges are never cached.
    use_cache = cache_dir is not None and boxes_source != "callable"
    cfile = cache_path(cache_dir, key) if use_cache else None
    if cache_dir is not None and not use_cache:
        warnings.append("calibration cache not used: boxes_fn cannot be part of the cache key")
    cached = None
    if cfile is not None:
        cached, why = _load_cache(cfile, key, parts)
        if why:
            warnings.append(why)

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    dst = Path(dst_onnx)
    dst.parent.mkdir(parents=True, exist_ok=True)
    reader = None if cached else _Reader(files, contract, calib_size, inputs, batch_size, boxes_fn, num_boxes)
    with tempfile.TemporaryDirectory(prefix=".rfdeploy-calib-", dir=dst.parent) as tmp:
        ort_cache = Path(tmp) / "ranges.json"
        if cached is not None:
            ort_cache.write_text(json.dumps(cached))
        out_tmp = Path(tmp) / "model.onnx"
        quant_logger = logging.getLogger()
        level = quant_logger.level
        quant_logger.setLevel(max(level, logging.ERROR))  # onnxruntime warns about optional pre-processing
        try:
            quantize_static(
                model, out_tmp, reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(excluded),
                calibrate_method=_ort_method(method),
                calibration_cache_path=ort_cache,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "CalibTensorRangeSymmetric": True,
                    "CalibPercentile": percentile,
                },
            )
        except (InputError, ModelFileError):
            raise
        except Exception as e:
            raise BuildError(f"INT8 quantization of {src_onnx} failed: {type(e).__name__}: {e}") from e
        finally:
            quant_logger.setLevel(level)
        ranges = json.loads(ort_cache.read_text())
        qmodel = onnx.load(str(out_tmp))

    restored = unquantize_region_inputs(qmodel, excluded)
    problems = qdq_problems(qmodel, excluded)
    if problems:
        raise BuildError(f"the INT8 model would not be accepted as is: {problems[:5]}")
    write_metadata(qmodel, {**metadata, PRECISION_KEY: "int8", METHOD_KEY: method, CACHE_KEY_KEY: key})
    try:
        onnx.checker.check_model(qmodel)
    except Exception as e:
        raise BuildError(f"the INT8 model is not valid ONNX: {e}") from e
    save_onnx_atomic(qmodel, dst)
    if cfile is not None and cached is None:
        _write_cache(cfile, key, parts, ranges)

    side = calibration_canvas(contract, calib_size)
    producer = {t: n.op_type for n in qmodel.graph.node for t in n.output}
    quantized = {
        n.name for n in qmodel.graph.node
        if n.op_type in op_types and producer.get(n.input[0]) == "DequantizeLinear"
    }
    return CalibrationReport(
        src=str(src_onnx), dst=str(dst), method=method, num_requested=num, num_used=len(files),
        images=[p.name for p in files], calib_shape=(side, side), cache_key=key,
        cache_file=str(cfile) if cfile else None, cache_hit=cached is not None,
        quantized_nodes=len(quantized), excluded_nodes=len(excluded),
        float_region_inputs_restored=restored, warnings=warnings,
    )
