"""FP32 ONNX + calibration images -> INT8 ONNX for TensorRT (explicit Q/DQ) or onnxruntime's CPU EP.

TensorRT 11 and TensorRT-RTX have no INT8 calibrator: INT8 is decided in the ONNX file. The file is
made in three steps:

1. **Ranges** (rfdeploy.calib.collect): the model runs on the calibration images one batch at a
   time, every activation the quantizer needs updates a running min/max or histogram, and the
   batch is dropped; memory is estimated first and the run is refused when it cannot fit.
2. **Quantization** with onnxruntime's ``quantize_static`` fed those ranges (through its
   calibration cache file), in the layout of the target (rfdeploy.calib.targets): ``tensorrt``
   writes signed symmetric Q/DQ on the inputs of Conv/Gemm/MatMul with per-channel weights and
   float biases (TensorRT's parser rejects int32 bias DQ, FACTS.md); ``cpu`` writes onnxruntime's
   operator format with uint8 activations and int8 per-channel weights (its fast x86 kernels).
3. **Checks and clean-up**: the post-network region (rfdeploy.export.graph_regions: Sigmoid, STC
   filter, Exp decode, anchors, TopK, box-coordinate inputs) stays float and reads no rounded
   tensor (any Q/DQ in front of it is bypassed, the cpu target keeps the heads' last Convs
   float so logits reach the Sigmoid unrounded), and ``keep_float`` nodes (from a sensitivity
   analysis, rfdeploy.calib.sensitivity) are left in float.

With biases left in float, onnxruntime must not enlarge weight scales "for the int32 bias" (its
QDQ quantizer does by default, even when biases are not quantized): a weight shared by several
Convs (RefineFace's heads run one set of weights on every pyramid level) would otherwise get the
scale demanded by the level with the smallest input range, and on the others round to zero.

Calibration inputs go through the one preprocessing (rfdeploy.core.preprocess) with
the contract stored in the model. To stack into fixed-shape batches, every image is first resized
so its long side is ``calib_size`` (models with a ``long_side`` contract are resized by the contract
itself, to ``resize_to``), then letterboxed by ``preprocess`` onto a square canvas of the padded
size (bottom/right padding with the mean colour, exactly as at run time). Video files contribute
evenly spaced frames (rfdeploy.calib.images).

Ranker models (a second input ``boxes`` [B, N, 5] in the ranker's own format: rows x, y, w, h
normalised by the source image width/height, score; sorted by score descending, zero-padded, as
made by rfdeploy.core.boxes.pack_candidates) also need candidates: ``boxes_fn(tensor, letterbox)
-> (N, 5)`` provides them in that format, or synthetic detector candidates are drawn in source-image
pixels (face-like aspect, log-uniform sizes inside the image, low-skewed scores, a random number of
them so the zero padding is seen too; seeded per image so runs repeat) and packed by
``pack_candidates``, the function every runtime backend uses.

The tensor ranges are cached in ``cache_dir`` as JSON, keyed by the sha256 of: the model bytes, the
hashes of the calibration pictures (file hash and frame index), the contract JSON, the method and
its parameters, ``num``, ``calib_size``, the target and its quantized op types, the box source and
the collector version. The key is in the file name and is checked against the key stored inside;
a file that does not match is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from rfdeploy.calib import collect
from rfdeploy.calib.images import (
    DEFAULT_VIDEO_FRAMES,
    CalibSource,
    FrameReader,
    list_sources,
    load_rgb,
    load_source,
    spread_order,
)
from rfdeploy.calib.qdq import (
    initializers_for_constants,
    qdq_problems,
    unquantize_region_inputs,
    unshare_initializers,
)
from rfdeploy.calib.targets import Int8Target, get_target
from rfdeploy.core.boxes import pack_candidates
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import BuildError, InputError, ModelFileError
from rfdeploy.core.fsutil import atomic_write_bytes, sha256_file
from rfdeploy.core.metadata import (
    CALIBRATION_KEY,
    CALIBRATION_METHOD,
    INT8_FLOAT_NODES,
    INT8_TARGET,
    PRECISION,
    onnx_metadata,
    read_contract,
    set_onnx_metadata,
)
from rfdeploy.core.onnxinfo import load_onnx, read_signature
from rfdeploy.core.preprocess import Letterbox, padded_size, preprocess
from rfdeploy.export.graph_regions import (
    SENSITIVE_OPS,
    Fp32Region,
    ensure_node_names,
    find_fp32_region,
)
from rfdeploy.export.precision_io import check_node_names, check_not_reduced, save_onnx_atomic

METHODS = collect.METHODS
DEFAULT_EXCLUDE_OPS = SENSITIVE_OPS
CACHE_FORMAT = 2
COLLECTOR_VERSION = f"stream-v2-bins{collect.DEFAULT_BINS}-sample{collect.DEFAULT_SAMPLE}"
SYNTHETIC_BOXES = "synthetic-packed-v2"

BoxesFn = Callable[[np.ndarray, Letterbox], np.ndarray]


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _ModelInputs:
    image: str
    boxes: str | None
    num_boxes: int | None  # static N of the boxes input, if any


def _model_inputs(model: onnx.ModelProto, path: str | os.PathLike) -> _ModelInputs:
    inputs = read_signature(model).inputs
    if not inputs or len(inputs[0].shape) != 4:
        raise ModelFileError(f"{path}: the first input must be an image [B,3,H,W]")
    if len(inputs) == 1:
        return _ModelInputs(inputs[0].name, None, None)
    if len(inputs) == 2 and len(inputs[1].shape) == 3:
        n = inputs[1].shape[1]
        return _ModelInputs(inputs[0].name, inputs[1].name, n if isinstance(n, int) else None)
    raise ModelFileError(f"{path}: unsupported inputs {[t.name for t in inputs]} (expected image [, boxes])")


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

    w, h = letterbox.image_size
    boxes, scores = synthetic_candidates(w, h, n, seed)
    packed, _ = pack_candidates(boxes, scores, w, h, n)
    return packed


def calibration_canvas(contract: PreprocessContract, calib_size: int) -> int:
    side = contract.resize_to if contract.resize == "long_side" else calib_size
    return padded_size(side, side, contract.pad_multiple)[0]


def prepare_rgb(rgb: np.ndarray, contract: PreprocessContract, calib_size: int) -> tuple[np.ndarray, Letterbox]:
    """One calibration tensor (1x3xSxS) from an RGB picture, through the runtime preprocessing."""
    from PIL import Image

    if contract.resize == "none":
        h, w = rgb.shape[:2]
        s = calib_size / max(h, w)
        if s != 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    side = calibration_canvas(contract, calib_size)
    return preprocess(rgb, contract, min_size=(side, side))


def prepare_image(path: Path, contract: PreprocessContract, calib_size: int) -> tuple[np.ndarray, Letterbox]:
    """One calibration tensor (1x3xSxS) from an image file."""
    return prepare_rgb(load_rgb(path), contract, calib_size)


def select_images(images, num: int, allow_fewer: bool,
                  video_frames: int = DEFAULT_VIDEO_FRAMES) -> tuple[list[CalibSource], list[str]]:
    """Up to ``num`` readable pictures spread over the sorted list, and warnings for skipped files."""
    if num < 1:
        raise ValueError("num must be >= 1")
    sources = list_sources(images, video_frames)
    chosen, warnings = [], []
    for i in spread_order(len(sources), num):
        if len(chosen) == num:
            break
        src = sources[i]
        if not src.is_video:  # video frames are checked when decoded (decoding them twice is slow)
            try:
                load_rgb(src.path)
            except InputError as e:
                warnings.append(f"skipped: {e}")
                continue
        chosen.append(src)
    if not chosen:
        raise InputError(f"no readable calibration image among {len(sources)} file(s)", hint="; ".join(warnings[:3]))
    if len(chosen) < num:
        msg = f"only {len(chosen)} readable calibration image(s), {num} requested"
        if not allow_fewer:
            raise InputError(msg, hint="add images, lower num, or pass allow_fewer=True")
        warnings.append(msg)
    return sorted(chosen), warnings


@dataclass
class CalibContext:
    """A model prepared for calibration: what every step (ranges, quantization, analysis) shares."""

    src: Path
    model: onnx.ModelProto  # node names made unique
    contract: PreprocessContract
    inputs: _ModelInputs
    metadata: dict[str, str]
    target: Int8Target
    op_types: tuple[str, ...]
    region: Fp32Region
    head_nodes: frozenset[str]  # produce the region's float inputs (kept float for the cpu target)
    calib_size: int
    boxes_fn: BoxesFn | None
    num_boxes: int

    @property
    def canvas(self) -> int:
        return calibration_canvas(self.contract, self.calib_size)

    @property
    def excluded(self) -> frozenset[str]:
        return self.region.nodes | (self.head_nodes if self.target.float_head_outputs else frozenset())

    def tensors(self) -> list[str]:
        return collect.tensors_to_calibrate(self.model, self.op_types, self.region.nodes,
                                            outputs=self.target.quantize_outputs)

    def batches(self, sources: list[CalibSource], batch_size: int, size: int | None = None,
                ) -> Iterator[dict[str, np.ndarray]]:
        """Preprocessed feeds of ``batch_size`` pictures, decoded lazily (one batch in memory)."""
        size = size or self.calib_size
        frames = FrameReader()
        try:
            for start in range(0, len(sources), batch_size):
                tensors, boxes = [], []
                for k, src in enumerate(sources[start : start + batch_size]):
                    x, lb = prepare_rgb(load_source(src, frames), self.contract, size)
                    tensors.append(x)
                    if self.inputs.boxes is not None:
                        b = self.boxes_fn(x, lb) if self.boxes_fn else synthetic_boxes(lb, self.num_boxes, start + k)
                        boxes.append(np.asarray(b, np.float32)[None])
                feed = {self.inputs.image: np.concatenate(tensors, 0)}
                if self.inputs.boxes is not None:
                    if len({b.shape for b in boxes}) != 1:
                        raise InputError("boxes_fn must return the same number of boxes for every image")
                    feed[self.inputs.boxes] = np.concatenate(boxes, 0)
                yield feed
        finally:
            frames.close()

    def probe_feed(self, side: int) -> dict[str, np.ndarray]:
        """A synthetic input at ``side`` x ``side`` (memory probes)."""
        rng = np.random.default_rng(0)
        feed = {self.inputs.image: rng.standard_normal((1, 3, side, side)).astype(np.float32)}
        if self.inputs.boxes is not None:
            lb = Letterbox(scale=1.0, image_size=(side, side), input_size=(side, side))
            feed[self.inputs.boxes] = synthetic_boxes(lb, self.num_boxes, 0)[None]
        return feed


def head_output_nodes(model: onnx.ModelProto, region: Fp32Region) -> frozenset[str]:
    producer = {t: n.name for n in model.graph.node for t in n.output}
    return frozenset(producer[t] for t in region.entry_tensors if t in producer and producer[t] not in region.nodes)


def prepare(
    src_onnx: str | os.PathLike,
    *,
    target: str = "tensorrt",
    exclude_ops=DEFAULT_EXCLUDE_OPS,
    exclude_nodes=None,
    op_types: tuple[str, ...] | None = None,
    calib_size: int = 640,
    boxes_fn: BoxesFn | None = None,
    num_boxes: int = 256,
) -> CalibContext:
    """Load and check ``src_onnx`` and find what stays float. Raises InputError/ModelFileError/BuildError."""
    tgt = get_target(target)
    if calib_size < 1 or num_boxes < 1:
        raise ValueError("calib_size and num_boxes must be >= 1")
    model = load_onnx(src_onnx)
    check_not_reduced(model, src_onnx)
    contract = read_contract(onnx_metadata(model), src_onnx)
    inputs = _model_inputs(model, src_onnx)
    metadata = onnx_metadata(model)
    if inputs.boxes is not None:
        num_boxes = inputs.num_boxes or num_boxes
    check_node_names(model, exclude_nodes, "exclude_nodes")
    initializers_for_constants(model)
    ensure_node_names(model)
    try:
        region = find_fp32_region(
            onnx.shape_inference.infer_shapes(model), image_input=inputs.image,
            sensitive_ops=frozenset(exclude_ops), extra_nodes=frozenset(exclude_nodes or ()),
        )
    except ValueError as e:
        raise BuildError(f"cannot analyse {src_onnx}: {e}") from e
    return CalibContext(
        src=Path(src_onnx), model=model, contract=contract, inputs=inputs, metadata=metadata, target=tgt,
        op_types=tuple(op_types or tgt.resolved_op_types()), region=region,
        head_nodes=head_output_nodes(model, region), calib_size=calib_size, boxes_fn=boxes_fn, num_boxes=num_boxes,
    )


# ---------------------------------------------------------------- cache


def cache_key_parts(
    model_sha256: str, source_ids: list[str], contract: PreprocessContract, method: str, num: int,
    calib_size: int, op_types, boxes_source: str | None, target: str = "tensorrt", percentile: float = 99.999,
) -> dict:
    return {
        "format": CACHE_FORMAT,
        "model_sha256": model_sha256,
        "images_sha256": sorted(source_ids),
        "contract": contract.to_json(),
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "num": num,
        "calib_size": calib_size,
        "target": target,
        "op_types": sorted(op_types),
        "boxes": boxes_source,
        "collector": COLLECTOR_VERSION,
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
    ranges = data.get("ranges")
    if not isinstance(ranges, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) for v in ranges.values()
    ):
        return None, f"calibration cache {path.name} holds no valid ranges and was recomputed"
    return {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}, None


def _write_cache(path: Path, key: str, parts: dict, ranges: dict) -> None:
    data = {"key": key, "key_parts": parts, "ranges": {k: [float(a), float(b)] for k, (a, b) in ranges.items()}}
    atomic_write_bytes(path, json.dumps(data).encode())


def _source_id(src: CalibSource) -> str:
    h = sha256_file(src.path)
    return h if src.frame is None else f"{h}#{src.frame}"


# ---------------------------------------------------------------- ranges


def parse_memory(text: str | int | float | None) -> int | None:
    """'8G', '512M', '8e9' or a byte count -> bytes; None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    s = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if mult > 1 else s)
    except ValueError:
        raise InputError(f"not a memory size: {text!r}", hint="e.g. 8G, 512M or a number of bytes") from None
    if value <= 0:
        raise InputError(f"memory size must be positive, got {text!r}")
    return int(value * mult)


def estimate_memory(ctx: CalibContext, session, batch_size: int, n_tensors: int, method: str,
                    max_memory: int | None) -> collect.MemoryEstimate:
    pm = max(1, ctx.contract.pad_multiple)
    probes = (padded_size(4 * pm, 4 * pm, pm)[0], padded_size(6 * pm, 6 * pm, pm)[0])
    per_image = collect.probe_batch_bytes(session, ctx.probe_feed, ctx.canvas, probes)
    state = 0 if method == "max" else n_tensors * 2 * collect.DEFAULT_BINS * 8
    base = collect.current_rss()
    budget = max_memory if max_memory is not None else base + int(0.9 * collect.available_memory())
    return collect.MemoryEstimate(batch_bytes=per_image * batch_size, state_bytes=state, base_bytes=base,
                                  budget_bytes=budget)


@dataclass
class RangeResult:
    ranges: dict[str, tuple[float, float]]
    key: str
    cache_file: Path | None
    cache_hit: bool
    estimate: collect.MemoryEstimate | None
    warnings: list[str]


def compute_ranges(ctx: CalibContext, sources: list[CalibSource], *, method: str = "max", num: int | None = None,
                   batch_size: int = 1, cache_dir=None, percentile: float = 99.999,
                   max_memory: int | str | None = None) -> RangeResult:
    """The activation range of every tensor the quantizer needs (from the cache when valid)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    max_memory = parse_memory(max_memory)
    warnings: list[str] = []
    boxes_source = None if ctx.inputs.boxes is None else (SYNTHETIC_BOXES if ctx.boxes_fn is None else "callable")
    parts = cache_key_parts(
        sha256_file(ctx.src), [_source_id(s) for s in sources], ctx.contract, method, num or len(sources),
        ctx.calib_size, ctx.op_types, boxes_source if boxes_source != "callable" else None,
        target=ctx.target.name, percentile=percentile,
    )
    key = cache_key(parts)
    # A user callable cannot be fingerprinted, so its ranges are never cached.
    use_cache = cache_dir is not None and boxes_source != "callable"
    cfile = cache_path(cache_dir, key) if use_cache else None
    if cache_dir is not None and not use_cache:
        warnings.append("calibration cache not used: boxes_fn cannot be part of the cache key")
    if cfile is not None:
        cached, why = _load_cache(cfile, key, parts)
        if why:
            warnings.append(why)
        if cached is not None:
            return RangeResult(cached, key, cfile, True, None, warnings)

    tensors = ctx.tensors()
    session = collect._session(collect.augmented_model(ctx.model, tensors))
    est = estimate_memory(ctx, session, batch_size, len(tensors), method, max_memory)
    ranges = collect.collect_ranges(
        ctx.model, tensors, ctx.batches(sources, batch_size), method,
        symmetric=ctx.target.symmetric_activations, percentile=percentile, estimate=est, session=session,
    )
    if cfile is not None:
        _write_cache(cfile, key, parts, ranges)
    return RangeResult(ranges, key, cfile, False, est, warnings)


# ---------------------------------------------------------------- quantization


def quantizer_settings(tgt: Int8Target, fmt: str | None = None) -> dict:
    """onnxruntime ``quantize_static`` keyword arguments that make a file for ``tgt`` (format ``fmt``,
    default the target's): format, types, per-channel weights and the extra options."""
    from onnxruntime.quantization import QuantFormat, QuantType

    fmt = fmt or tgt.quant_format
    return dict(
        quant_format=QuantFormat.QOperator if fmt == "QOperator" else QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if tgt.signed_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={
            "ActivationSymmetric": tgt.symmetric_activations,
            "WeightSymmetric": True,
            "QuantizeBias": tgt.quantize_bias if fmt == tgt.quant_format else False,
            # biases stay float: no int32 bias range to protect, and a weight read by several Convs
            # must keep its own scale (see the module docstring)
            "QDQDisableWeightAdjustForInt32Bias": True,
            **tgt.extra_options,
        },
    )


def quantize_model(ctx: CalibContext, ranges: dict[str, tuple[float, float]], *, keep_float=frozenset(),
                   quant_format: str | None = None, reduce_range: bool = False) -> tuple[onnx.ModelProto, int]:
    """The quantized model (not saved) and how many float-region inputs were rewired to float.

    ``quant_format`` overrides the target's (the sensitivity analysis simulates either target with
    Q/DQ). Nodes in ``keep_float`` stay in float."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    fmt = quant_format or ctx.target.quant_format
    excluded = set(ctx.excluded) | set(keep_float)
    data = TensorsData(CalibrationMethod.MinMax,
                       {k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in ranges.items()})
    model = ctx.model
    if fmt == "QOperator":  # int32 biases are quantized per consumer: no initializer may be shared
        model = onnx.ModelProto()
        model.CopyFrom(ctx.model)
        unshare_initializers(model, ctx.op_types)
    with tempfile.TemporaryDirectory(prefix=".rfdeploy-quant-") as tmp:
        ranges_file = Path(tmp) / "ranges.json"
        save_tensors_data(data, ranges_file)
        out_tmp = Path(tmp) / "model.onnx"
        quant_logger = logging.getLogger()
        level = quant_logger.level
        quant_logger.setLevel(max(level, logging.ERROR))  # onnxruntime warns about optional pre-processing
        try:
            quantize_static(
                model, out_tmp, None,
                op_types_to_quantize=list(ctx.op_types),
                reduce_range=reduce_range,
                nodes_to_exclude=sorted(excluded),
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=ranges_file,
                **quantizer_settings(ctx.target, fmt),
            )
        except (InputError, ModelFileError):
            raise
        except Exception as e:
            raise BuildError(f"INT8 quantization of {ctx.src} failed: {type(e).__name__}: {e}") from e
        finally:
            quant_logger.setLevel(level)
        qmodel = onnx.load(str(out_tmp))
    restored = unquantize_region_inputs(qmodel, excluded) if fmt == "QDQ" else 0
    return qmodel, restored


def quantized_node_count(qmodel: onnx.ModelProto, op_types) -> int:
    producer = {t: n.op_type for n in qmodel.graph.node for t in n.output}
    count = 0
    for n in qmodel.graph.node:
        if n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger"):
            count += 1
        elif n.op_type in op_types and n.input and producer.get(n.input[0]) == "DequantizeLinear":
            count += 1
    return count


def cpu_problems(model: onnx.ModelProto, region: frozenset[str]) -> list[str]:
    """Region nodes must read float tensors in an operator-format model too."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    int_types = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}
    problems = []
    for n in model.graph.node:
        if n.name in region and n.op_type not in ("Shape", "Size"):
            bad = [t for t in n.input if types.get(t) in int_types]
            if bad:
                problems.append(f"{n.name} ({n.op_type}) must stay float but reads 8-bit {bad[0]}")
    return problems


def write_int8(ctx: CalibContext, qmodel: onnx.ModelProto, dst: Path, *, method: str, key: str,
               keep_float=()) -> None:
    """Check ``qmodel`` for its target, stamp the metadata and write it atomically."""
    if ctx.target.quant_format == "QDQ":
        problems = qdq_problems(qmodel, set(ctx.excluded) | set(keep_float))
    else:
        problems = cpu_problems(qmodel, ctx.region.nodes)
    if problems:
        raise BuildError(f"the INT8 model would not be accepted as is: {problems[:5]}")
    meta = {**ctx.metadata, PRECISION: "int8", CALIBRATION_METHOD: method, CALIBRATION_KEY: key,
            INT8_TARGET: ctx.target.name}
    if keep_float:
        meta[INT8_FLOAT_NODES] = json.dumps(sorted(keep_float))
    set_onnx_metadata(qmodel, meta, replace=True)
    try:
        onnx.checker.check_model(qmodel)
    except Exception as e:
        raise BuildError(f"the INT8 model is not valid ONNX: {e}") from e
    save_onnx_atomic(qmodel, dst)


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
