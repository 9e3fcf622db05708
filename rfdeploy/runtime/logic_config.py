"""The one factory of :class:`~rfdeploy.runtime.facelogic.FaceLogicConfig`: from the models'
metadata (contracts and configs) and the engines' limits.

``rfdeploy infer``, ``batch``, ``bench`` and ``eval`` (all through
:class:`~rfdeploy.runtime.pipeline.FacePipeline`) and the faces model of a Triton repository
(:mod:`rfdeploy.deploy.triton`) call :func:`face_logic_config` with what they know about the same
model files, so an image is tiled, merged, ranked and thresholded the same way whether it is run
or served.
"""

from __future__ import annotations

import dataclasses

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError
from rfdeploy.core.sizes import (
    DEFAULT_AUTO_MAX_INPUT,
    DEFAULT_AUTO_TILE,
    DEFAULT_TILE_BATCH,
    HOST_AUTO_TILE,
    HOST_BATCH_PIXELS,
    MIN_TILE,
)
from rfdeploy.engines.profiles import input_limits
from rfdeploy.runtime.facelogic import FaceLogicConfig, tile_limit
from rfdeploy.runtime.tiling import TilePolicy

# Candidates kept across all tiles and passes of one image before the ranker and NMS. Each detector
# call already returns only its own top K (the config's ``candidates``); a tiled 8K image has dozens
# of calls, so the image-level cap is CRFace's N (5000), or the ranker's N when that is larger.
MERGED_CANDIDATES = 5000
# Without a model config (third-party detectors): the default RefineFace config's largest anchor.
_FALLBACK_LARGEST_FACE = 362
# Output and candidate thresholds of a detector without an rfdeploy config.
_FALLBACK_SCORE_THR = 0.5
_FALLBACK_CANDIDATE_THR = 0.02


def ranker_runs(ranker, use_ranker: bool | None = None) -> bool:
    """The one rule for whether the ranker runs, used by ``infer``/``batch``/``bench``/``eval``
    (through the CLI and :class:`~rfdeploy.runtime.pipeline.FacePipeline`) and by Triton
    repositories: ``use_ranker`` True or False decides; None runs it only when a ``ranker`` file is
    given. Measured, the bundled ranker does not pay for its time on the bundled detector
    (docs/benchmarks.md, "Ranker"), so the detector runs alone by default."""
    if use_ranker is None:
        return ranker is not None
    return bool(use_ranker)


def largest_face(detector_config) -> int:
    """The largest face (pixels at the detector's input scale) one tile must hold whole: the
    config's ``tile_max_face`` where the model sets one, else its largest anchor,
    ``strides[-1] * max(anchor_scales)``. Larger faces are found in a downscaled pass of the
    pyramid."""
    chosen = getattr(detector_config, "tile_max_face", None)
    if chosen:
        return int(chosen)
    strides = getattr(detector_config, "strides", None)
    scales = getattr(detector_config, "anchor_scales", None)
    if not strides or not scales:
        return _FALLBACK_LARGEST_FACE
    return int(round(strides[-1] * max(scales)))


def engine_limits(manifest, contract: PreprocessContract):
    """What an engine's profiles admit, as the runtime feeds them (one profile:
    :func:`rfdeploy.engines.profiles.input_limits`); ``None`` without a manifest (onnxruntime and
    torch take any shape)."""
    if manifest is None:
        return None

    return input_limits(manifest.profiles, contract.pad_multiple)


def face_logic_config(
    *,
    detector_contract: PreprocessContract,
    detector_config=None,
    ranker_contract: PreprocessContract | None = None,
    ranker_boxes: int = 0,
    ranker_config=None,
    detector_limits=None,
    ranker_limits=None,
    network_max_batch: int | None = None,
    tile: str | TilePolicy = "auto",
    tile_batch: int = DEFAULT_TILE_BATCH,
    max_untiled: int = DEFAULT_AUTO_MAX_INPUT,
    score_thr: float | None = None,
    candidate_thr: float | None = None,
    nms_iou: float = 0.4,
    max_det: int = 750,
    device: str | None = None,
    host_network: bool = True,
) -> FaceLogicConfig:
    """The face logic's settings for one detector (and ranker).

    ``detector_config``: the detector's model config (:class:`rfdeploy.models.config.DetectorConfig`,
    or None for a third-party detector): the output and candidate thresholds and the largest anchor
    come from it. ``detector_limits`` / ``ranker_limits``: an engine's
    :class:`~rfdeploy.engines.profiles.InputLimits` (see :func:`engine_limits`), None for runners
    that take any shape; then images whose long side fits ``max_untiled`` run whole.
    ``network_max_batch``: a fixed batch size of a network without limits (None: any).
    ``tile_batch``: most tiles per detector call asked for (capped by the engine; for a network
    without limits on the CPU (``host_network``), also by ``HOST_BATCH_PIXELS`` per call, as
    ``tile=auto`` then cuts ``HOST_AUTO_TILE``-px tiles; on a GPU, 1024-px tiles batched as asked). ``score_thr``
    and ``candidate_thr``: None = the detector config's; the output threshold is the ranker
    config's instead when a ranker runs and carries one (``output_score_threshold`` > 0), and the
    candidate threshold is at most the ranker's ``candidate_score_threshold`` when one runs.
    Raises InputError for bad settings.
    """
    try:
        policy = TilePolicy.parse(tile)
    except ValueError as e:
        raise InputError(f"--tile: {e}") from None
    if tile_batch < 1:
        raise InputError(f"the tile batch must be >= 1, got {tile_batch}")
    limit = detector_limits.max_batch if detector_limits is not None else network_max_batch
    # engines and any-shape runners on a GPU: 1024-px tiles (what an engine's default profile is
    # tuned for), batched; any-shape runners on the CPU: the largest untiled input as the tile, and
    # a pixel budget per call (one large tile per call ran an 8K image faster there)
    host_tiling = detector_limits is None and host_network
    auto_tile = max(MIN_TILE, min(HOST_AUTO_TILE, max_untiled)) if host_tiling else DEFAULT_AUTO_TILE
    if score_thr is None:
        score_thr = getattr(detector_config, "output_score_threshold", _FALLBACK_SCORE_THR)
        # a ranker that re-scores on a scale of its own (trained with its calibration term) says
        # where faces start on it; the detector's threshold would not fit the refined scores
        if ranker_boxes and getattr(ranker_config, "output_score_threshold", 0.0) > 0:
            score_thr = ranker_config.output_score_threshold
    if candidate_thr is None:
        candidate_thr = getattr(detector_config, "score_threshold", _FALLBACK_CANDIDATE_THR)
        # a ranker gets the candidates it was trained on, down to the lowest score it saw
        if ranker_boxes and ranker_config is not None:
            candidate_thr = min(candidate_thr, getattr(ranker_config, "candidate_score_threshold", candidate_thr))
    try:
        if host_tiling:
            side = policy.size if policy.mode == "size" else auto_tile
            tile_batch = min(tile_batch, max(1, HOST_BATCH_PIXELS // (side * side)))
        cfg = FaceLogicConfig(
            detector_contract=detector_contract,
            ranker_contract=ranker_contract,
            ranker_boxes=ranker_boxes,
            max_batch=min(tile_batch, limit or tile_batch),
            max_input=None if detector_limits is not None else max_untiled,
            max_input_size=detector_limits.max_size if detector_limits is not None else None,
            min_input=detector_limits.min_size if detector_limits is not None else None,
            ranker_min_input=ranker_limits.min_size if ranker_limits is not None else None,
            tile=policy,
            auto_tile=auto_tile,
            candidate_thr=float(candidate_thr),
            max_candidates=max(MERGED_CANDIDATES, ranker_boxes),
            nms_iou=nms_iou,
            max_det=max_det,
            score_thr=float(score_thr),
            device=device,
        )
        # The largest anchor must fit a tile with room to spare; small tiles (an engine with a
        # small input) fall back to the face logic's tile // 4 and take more downscaled passes.
        face = largest_face(detector_config)
        size = policy.size if policy.mode == "size" else (
            policy.tile_size(1 << 30, 1 << 30, tile_limit(cfg), cfg.auto_tile) if policy.mode == "auto" else None)
        min_face = getattr(detector_config, "tile_min_face", None) or cfg.tile_min_face
        fits = size is not None and size > 2 * face
        return dataclasses.replace(cfg, tile_max_face=face if fits else None,
                                   tile_min_face=min(min_face, face - 1) if fits else cfg.tile_min_face)
    except ValueError as e:  # e.g. a tile larger than the engine's input
        raise InputError(str(e)) from None
