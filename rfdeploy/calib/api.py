"""``rfdeploy calibrate``: an INT8 ONNX file from an fp32 export and calibration images, with an
optional per-layer sensitivity analysis. The steps are in rfdeploy.calib.calibrate (ranges,
quantization, checks; see its docstring) and rfdeploy.calib.sensitivity (the analysis, which runs
on the steps' context); this module puts them together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rfdeploy.calib import sensitivity
from rfdeploy.calib.calibrate import (
    DEFAULT_EXCLUDE_OPS,
    METHODS,
    BoxesFn,
    compute_ranges,
    peak_rss,
    prepare,
    quantize_model,
    quantized_node_count,
    select_images,
    write_int8,
)
from rfdeploy.calib.images import DEFAULT_VIDEO_FRAMES, spread_order
from rfdeploy.export.precision_io import check_node_names


@dataclass
class CalibrationReport:
    src: str
    dst: str
    method: str
    target: str
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
    kept_float: list[str] = field(default_factory=list)
    memory_estimate_bytes: int | None = None
    peak_rss_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)
    sensitivity_file: str | None = None
    sensitivity: object | None = None  # rfdeploy.calib.sensitivity.SensitivityReport

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    src_onnx: str | os.PathLike,
    images: str | os.PathLike | list,
    dst_onnx: str | os.PathLike,
    *,
    num: int = 256,
    method: str = "max",
    target: str = "tensorrt",
    cache_dir: str | os.PathLike | None = None,
    exclude_ops: set[str] | frozenset[str] = DEFAULT_EXCLUDE_OPS,
    exclude_nodes: set[str] | None = None,
    keep_float: set[str] | list[str] | None = None,
    op_types: tuple[str, ...] | None = None,
    calib_size: int = 640,
    batch_size: int = 1,
    allow_fewer: bool = False,
    boxes_fn: BoxesFn | None = None,
    num_boxes: int = 256,
    percentile: float = 99.999,
    max_memory: int | str | None = None,
    video_frames: int = DEFAULT_VIDEO_FRAMES,
    reduce_range: bool = False,
    analyse: bool = False,
    analyse_num: int = 8,
    analyse_size: int | None = 320,
    analyse_mode: str = "one_at_a_time",
    keep_float_top: int | None = None,
    max_nmse: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationReport:
    """Write an INT8 version of ``src_onnx`` calibrated on ``images`` for ``target`` (see module doc).

    ``images``: a folder (its image and video files, sorted), or a list of files/folders; ``num``
    pictures are used, spread over the sorted list. ``method``: "max" (min/max), "entropy" or
    "percentile". ``target``: "tensorrt" (explicit Q/DQ) or "cpu" (onnxruntime's CPU kernels).
    ``keep_float``: node names left in float (e.g. the most sensitive ones of an analysis).
    ``max_memory``: peak memory allowed for the range collection (bytes or "8G"; default: what
    the system has available). ``num_boxes``: candidates per image for a ranker whose boxes input
    has no fixed size. ``reduce_range``: 7-bit weights (cpu target on x86 CPUs without VNNI).

    ``analyse``: rank the layers by sensitivity (rfdeploy.calib.sensitivity) on ``analyse_num`` of
    the calibration pictures at ``analyse_size`` (None: ``calib_size``), write the ranking beside
    ``dst_onnx`` (``<stem>.sensitivity.json``) and leave in float the ``keep_float_top`` most
    sensitive units, or the fewest that bring the measured nmse to ``max_nmse``.

    Raises InputError (missing/unreadable images, fewer than ``num`` without ``allow_fewer``,
    missing model file, unknown node in ``exclude_nodes``/``keep_float``, a run that would not fit
    in memory), ModelFileError (not ONNX, no contract, already reduced precision), BuildError
    (quantization failed or produced a model the target would refuse). ``dst_onnx`` is written
    atomically: on any error it is left as it was.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ctx = prepare(src_onnx, target=target, exclude_ops=exclude_ops, exclude_nodes=exclude_nodes, op_types=op_types,
                  calib_size=calib_size, boxes_fn=boxes_fn, num_boxes=num_boxes)
    check_node_names(ctx.model, keep_float, "keep_float")
    sources, warnings = select_images(images, num, allow_fewer, video_frames)
    rr = compute_ranges(ctx, sources, method=method, num=num, batch_size=batch_size, cache_dir=cache_dir,
                        percentile=percentile, max_memory=max_memory)
    warnings += rr.warnings
    dst = Path(dst_onnx)
    sens, sens_file = None, None
    if analyse:
        if analyse_num < 1:
            raise ValueError("analyse_num must be >= 1")
        picked = sorted(sources[i] for i in spread_order(len(sources), analyse_num)[:analyse_num])
        sens, sim = sensitivity.analyse(ctx, rr.ranges, picked, method=method, mode=analyse_mode,
                                        size=analyse_size, progress=progress)
        chosen = sensitivity.choose_float_units(sens, sim, max_nmse=max_nmse, count=keep_float_top)
        keep_float = set(keep_float or ()) | set(chosen)
        sens_file = sens.write(sensitivity.sensitivity_path(dst))
    kept = sorted(set(keep_float or ()) - ctx.excluded)
    qmodel, restored = quantize_model(ctx, rr.ranges, keep_float=kept, reduce_range=reduce_range)
    write_int8(ctx, qmodel, dst, method=method, key=rr.key, keep_float=kept)
    side = ctx.canvas
    return CalibrationReport(
        src=str(src_onnx), dst=str(dst), method=method, target=ctx.target.name, num_requested=num,
        num_used=len(sources), images=[s.name for s in sources], calib_shape=(side, side), cache_key=rr.key,
        cache_file=str(rr.cache_file) if rr.cache_file else None, cache_hit=rr.cache_hit,
        quantized_nodes=quantized_node_count(qmodel, ctx.op_types), excluded_nodes=len(ctx.excluded),
        float_region_inputs_restored=restored, kept_float=kept,
        memory_estimate_bytes=rr.estimate.peak_bytes if rr.estimate else None, peak_rss_bytes=peak_rss(),
        warnings=warnings, sensitivity_file=str(sens_file) if sens_file else None, sensitivity=sens,
    )
