"""Detector -> tiles -> merge -> ranker -> NMS around injected inference callables.

Everything between the pixels and the networks, for hosts that run the networks their own way:
Triton's Python backend (BLS calls to TensorRT models), or any other server. The networks are
two callables:

* ``infer_detector(batch)``: ``batch`` [B,3,H,W] float32 (already preprocessed with the detector's
  contract) -> ``(boxes [B,K,4] x1,y1,x2,y2 in input-tensor pixels, scores [B,K])``; rows with
  score 0 are padding (rfdeploy's detector graph pads its fixed-size candidate set that way).
* ``infer_ranker(image, boxes)``: ``image`` [1,3,h,w] float32 (ranker contract), ``boxes`` [1,N,5]
  from :func:`rfdeploy.core.boxes.pack_candidates` -> refined scores [1,N].

On the host everything is numpy, NMS included (no torch needed). With ``FaceLogicConfig.device`` set
(the torch backend on a GPU) the image is uploaded once and resizing, normalisation, tile cuts and
batching run as torch ops on that device, batches reach the network without a host round trip, and
NMS runs there too; only the small candidate arrays (K rows per tile) visit the host for merging.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from rfdeploy.core.boxes import nms, pack_candidates
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.preprocess import (
    Letterbox,
    padded_size,
    preprocess,
    preprocess_torch,
    resize_torch,
    target_scale,
    to_input_torch,
)
from rfdeploy.runtime.tiling import (
    DEFAULT_AUTO_TILE,
    MIN_TILE,
    Pass,
    Tile,
    TilePlan,
    TilePolicy,
    drop_cut_boxes,
    plan_pyramid,
    to_image_coords,
)

InferDetector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
InferRanker = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Optional stage timer: timer(stage, seconds) with stage in preprocess / merge / nms
Timer = Callable[[str, float], None]
# Optional progress callback: progress(tiles_done, tiles_total), called after each detector batch
Progress = Callable[[int, int], None]


def _no_timer(stage: str, seconds: float) -> None:
    pass


@dataclass(frozen=True)
class FaceLogicConfig:
    """What the glue needs to know about the two networks and the output policy.

    ``max_batch``: most tiles per detector call (the engine profile's max batch).
    ``max_input``: longest side the detector accepts; None = unbounded.
    ``max_input_size``: (width, height) of the largest detector input (an engine profile's max,
    see :func:`rfdeploy.engines.profiles.input_limits`). With ``tile=auto`` an image runs whole when
    its padded size fits, else in square tiles of at most the smaller of the two sides.
    ``min_input``: (width, height) the detector input is padded up to at least (the profile's min),
    so small images and the last, smallest pyramid passes still fit the engine.
    ``ranker_min_input``: the same for the ranker's input.
    ``tile``: a :class:`~rfdeploy.runtime.tiling.TilePolicy` (``auto|off|SIZE`` as in ``rfdeploy infer
    --tile``; a string is parsed once, here, and ``to_dict`` writes it back as one).
    ``auto_tile``: the tile side ``tile=auto`` cuts images too large to run whole into.
    ``tile_max_face``: largest face (px at tile scale) a tile must hold whole; default tile // 4.
    ``ranker_boxes``: the ranker's N (rows of its boxes input); 0 = no ranker.
    ``device``: None = pre/post-processing in numpy on the host; a torch device (``cuda:0``,
    ``cpu``) = torch ops on that device (see the module docstring).
    """

    detector_contract: PreprocessContract
    ranker_contract: PreprocessContract | None = None
    ranker_boxes: int = 0
    max_batch: int = 8
    max_input: int | None = None
    min_input: tuple[int, int] | None = None
    max_input_size: tuple[int, int] | None = None
    ranker_min_input: tuple[int, int] | None = None
    tile: TilePolicy | str = "auto"
    auto_tile: int = DEFAULT_AUTO_TILE
    tile_max_face: int | None = None
    tile_min_face: int = 16
    seam_margin: int = 2
    candidate_thr: float = 0.05
    max_candidates: int = 5000
    nms_iou: float = 0.4
    max_det: int = 750
    score_thr: float = 0.5
    device: str | None = None

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.ranker_boxes < 0:
            raise ValueError(f"ranker_boxes must be >= 0, got {self.ranker_boxes}")
        if self.ranker_boxes and self.ranker_contract is None:
            raise ValueError("a ranker (ranker_boxes > 0) needs its ranker_contract")
        for name in ("candidate_thr", "nms_iou", "score_thr"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {v}")
        if self.max_candidates < 1 or self.max_det < 1:
            raise ValueError("max_candidates and max_det must be >= 1")
        for name in ("min_input", "max_input_size", "ranker_min_input"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (int(v[0]), int(v[1])))
        object.__setattr__(self, "tile", TilePolicy.parse(self.tile))  # ValueError for a bad spec
        if self.auto_tile < MIN_TILE:
            raise ValueError(f"auto_tile must be >= {MIN_TILE}, got {self.auto_tile}")
        self.tile.tile_size(1, 1, tile_limit(self))  # ValueError for a tile larger than the input

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["tile"] = str(self.tile)
        d["detector_contract"] = self.detector_contract.to_dict()
        d["ranker_contract"] = self.ranker_contract.to_dict() if self.ranker_contract else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FaceLogicConfig":
        d = dict(d)
        d["detector_contract"] = PreprocessContract.from_dict(d["detector_contract"])
        if d.get("ranker_contract") is not None:
            d["ranker_contract"] = PreprocessContract.from_dict(d["ranker_contract"])
        return cls(**d)


# --- planning ---------------------------------------------------------------------------------


def tile_limit(cfg: FaceLogicConfig) -> int | None:
    """The largest tile side the detector takes: ``max_input`` and the smaller side of
    ``max_input_size`` (rounded down to the padding multiple, so a padded tile still fits)."""
    limits = [cfg.max_input] if cfg.max_input is not None else []
    if cfg.max_input_size is not None:
        m = cfg.detector_contract.pad_multiple
        limits.append(min(cfg.max_input_size) // m * m)
    return min(limits) if limits else None


def input_size(width: int, height: int, cfg: FaceLogicConfig) -> tuple[int, int]:
    """(width, height) of the detector input made from a ``width`` x ``height`` image or tile:
    the contract's resize and padding, then ``min_input`` (what :func:`preprocess` does)."""
    scale = target_scale(width, height, cfg.detector_contract)
    if scale != 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    pw, ph = padded_size(width, height, cfg.detector_contract.pad_multiple)
    if cfg.min_input is not None:
        pw, ph = max(pw, cfg.min_input[0]), max(ph, cfg.min_input[1])
    return pw, ph


def plan_for(width: int, height: int, cfg: FaceLogicConfig) -> TilePlan | None:
    """The tile pyramid for an image, or None when it runs whole."""
    if cfg.detector_contract.resize != "none":
        return None  # a detector that resizes its input sees the whole image anyway
    limit, policy = tile_limit(cfg), cfg.tile
    if cfg.max_input_size is not None and policy.mode == "auto":
        pw, ph = input_size(width, height, cfg)
        if pw <= cfg.max_input_size[0] and ph <= cfg.max_input_size[1] and (
                cfg.max_input is None or max(width, height) <= cfg.max_input):
            return None
        policy = TilePolicy("size", min(cfg.auto_tile, limit))  # too large (or the wrong way round) to run whole
    tile = policy.tile_size(width, height, limit, cfg.auto_tile)
    if tile is None:
        return None
    max_face = cfg.tile_max_face or tile // 4
    if max_face + 2 * cfg.seam_margin >= tile:
        # a small engine input: smaller faces per tile, more (downscaled) passes cover the rest
        max_face = tile // 4
    return plan_pyramid(width, height, tile, max_face, min(cfg.tile_min_face, max_face - 1), cfg.seam_margin,
                        cfg.detector_contract.pad_multiple)


def detector_input_shapes(width: int, height: int, cfg: FaceLogicConfig) -> list[tuple[int, int, int, int]]:
    """The (B, 3, H, W) of every batch :func:`detector_batches` feeds for a ``width`` x ``height``
    image, in order, without touching pixels (to check an engine profile against the pipeline)."""
    plan = plan_for(width, height, cfg)
    if plan is None:
        pw, ph = input_size(width, height, cfg)
        return [(1, 3, ph, pw)]
    out = []
    for p in plan.passes:
        th, tw = p.tile_shape
        pw, ph = input_size(tw, th, cfg)
        n = len(p.tiles)
        out += [(min(cfg.max_batch, n - i), 3, ph, pw) for i in range(0, n, cfg.max_batch)]
    return out


@dataclass(frozen=True)
class TileJob:
    """Where one row of a detector batch came from."""

    pass_: Pass | None  # None: the whole image, untiled
    tile: Tile | None
    letterbox: Letterbox


def detector_batches(rgb, cfg: FaceLogicConfig, timer: Timer = _no_timer) -> Iterator[tuple[object, list[TileJob]]]:
    """Preprocessed detector batches (at most ``max_batch`` rows, one tile shape per batch).

    ``rgb``: HxWx3 uint8, a numpy array (batches are numpy) or a torch tensor (batches are torch
    tensors on its device). Memory stays bounded by one pass's resized image plus one batch.
    """
    h, w = rgb.shape[:2]
    plan = plan_for(w, h, cfg)
    on_host = isinstance(rgb, np.ndarray)
    t0 = time.perf_counter()
    if plan is None:
        if on_host:
            x, lb = preprocess(rgb, cfg.detector_contract, cfg.min_input)
        else:
            x, lb = preprocess_torch(rgb, cfg.detector_contract, cfg.min_input)
        timer("preprocess", time.perf_counter() - t0)
        yield x, [TileJob(None, None, lb)]
        return
    if on_host:
        yield from _host_batches(rgb, plan, cfg, timer)
        return
    import torch

    for p in plan.passes:
        t0 = time.perf_counter()
        rows, jobs = [], []
        for x, lb, t in _torch_tiles(rgb, p, cfg):
            rows.append(x)
            jobs.append(TileJob(p, t, lb))
            if len(rows) == cfg.max_batch:
                timer("preprocess", time.perf_counter() - t0)
                yield torch.cat(rows), jobs
                rows, jobs = [], []
                t0 = time.perf_counter()
        if rows:
            timer("preprocess", time.perf_counter() - t0)
            yield torch.cat(rows), jobs


def _host_batches(rgb: np.ndarray, plan: TilePlan, cfg: FaceLogicConfig, timer: Timer):
    """The tiled batches in numpy: each pass resized once, each tile normalised straight from
    its view of the pass into its row of the batch (no per-tile copies, no concatenation)."""
    pil = None  # the image as Pillow holds it, made once for all downscaled passes (100 MB at 8K)
    for p in plan.passes:
        t0 = time.perf_counter()
        if (p.width, p.height) == (rgb.shape[1], rgb.shape[0]):
            scaled = rgb
        else:
            from PIL import Image

            pil = pil or Image.fromarray(rgb)
            scaled = np.asarray(pil.resize((p.width, p.height), Image.BILINEAR))
        th, tw = p.tile_shape
        pw, ph = input_size(tw, th, cfg)
        for i in range(0, len(p.tiles), cfg.max_batch):
            chunk = p.tiles[i:i + cfg.max_batch]
            batch = np.zeros((len(chunk), 3, ph, pw), np.float32)
            jobs = []
            for row, t in zip(batch, chunk):
                _, lb = preprocess(t.crop(scaled), cfg.detector_contract, cfg.min_input, out=row)
                jobs.append(TileJob(p, t, lb))
            timer("preprocess", time.perf_counter() - t0)
            yield batch, jobs
            t0 = time.perf_counter()


def _torch_tiles(rgb, p: Pass, cfg: FaceLogicConfig):
    """The same on the image's torch device: the pass is resized once, in uint8 as Pillow does it
    (the full-resolution pass is the image itself), then each tile is cut, normalised and padded.
    No float copy of a whole pass is made (at 8K one would be 0.4 GB)."""

    contract = cfg.detector_contract
    scaled = resize_torch(rgb, p.width, p.height)
    for t in p.tiles:
        pw, ph = padded_size(t.width, t.height, contract.pad_multiple)
        if cfg.min_input is not None:
            pw, ph = max(pw, cfg.min_input[0]), max(ph, cfg.min_input[1])
        lb = Letterbox(scale=1.0, image_size=(t.width, t.height), input_size=(pw, ph))
        yield to_input_torch(scaled[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width], contract, pw, ph), lb, t


def to_host(x) -> np.ndarray:
    """A torch tensor (any device) or array-like -> numpy float32."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, np.float32)


def _check_detector_output(boxes, scores, n: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, scores = to_host(boxes), to_host(scores)
    if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
        raise ModelFileError(f"detector returned boxes of shape {boxes.shape}, expected [{n},K,4]")
    if scores.shape != boxes.shape[:2]:
        raise ModelFileError(f"detector returned scores of shape {scores.shape}, expected {boxes.shape[:2]}")
    return boxes, scores


def job_candidates(boxes: np.ndarray, scores: np.ndarray, job: TileJob, cfg: FaceLogicConfig):
    """One batch row's candidates in image pixels: thresholded, cut boxes dropped, scaled back."""
    keep = scores >= max(cfg.candidate_thr, np.finfo(np.float32).tiny)  # score 0 = padding
    b = job.letterbox.to_image(boxes[keep])  # tensor pixels -> tile (or image) pixels
    s = scores[keep]
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # boxes wholly in the padding have no area left
    b, s = b[ok], s[ok]
    if job.tile is None:
        return b, s
    p = job.pass_
    b, s = drop_cut_boxes(b, s, job.tile, p.width, p.height, cfg.seam_margin)
    own = p.responsible(b)
    return to_image_coords(b[own], job.tile, p.scale), s[own]


def detect_candidates(rgb, infer_detector: InferDetector, cfg: FaceLogicConfig, timer: Timer = _no_timer,
                      progress: Progress | None = None):
    """Merged image-level candidates ``(boxes [M,4], scores [M])``, best first, at most max_candidates."""
    parts_b, parts_s = [], []
    plan = plan_for(rgb.shape[1], rgb.shape[0], cfg) if progress else None
    total, done = (plan.num_tiles if plan else 1), 0
    for batch, jobs in detector_batches(rgb, cfg, timer):
        boxes, scores = _check_detector_output(*infer_detector(batch), len(jobs))
        t0 = time.perf_counter()
        for i, job in enumerate(jobs):
            b, s = job_candidates(boxes[i], scores[i], job, cfg)
            parts_b.append(b)
            parts_s.append(s)
        timer("merge", time.perf_counter() - t0)
        done += len(jobs)
        if progress:
            progress(done, total)
    b = np.concatenate(parts_b).astype(np.float32) if parts_b else np.zeros((0, 4), np.float32)
    s = np.concatenate(parts_s).astype(np.float32) if parts_s else np.zeros((0,), np.float32)
    order = np.argsort(-s, kind="stable")[: cfg.max_candidates]
    return b[order], s[order]


def rank_candidates(rgb, boxes: np.ndarray, scores: np.ndarray, infer_ranker: InferRanker,
                    cfg: FaceLogicConfig):
    """Ranker over the top-N candidates: ``(boxes, refined scores, detector scores)`` of those N."""
    h, w = rgb.shape[:2]
    packed, order = pack_candidates(boxes, scores, w, h, cfg.ranker_boxes)
    if isinstance(rgb, np.ndarray):
        image, _ = preprocess(rgb, cfg.ranker_contract, cfg.ranker_min_input)
    else:
        import torch

        image, _ = preprocess_torch(rgb, cfg.ranker_contract, cfg.ranker_min_input)
        packed = torch.from_numpy(packed).to(rgb.device)
    out = to_host(infer_ranker(image, packed[None]))
    if out.shape != (1, cfg.ranker_boxes):
        raise ModelFileError(f"ranker returned scores of shape {out.shape}, expected (1, {cfg.ranker_boxes})")
    return boxes[order], out[0, : len(order)], scores[order]


def final_faces(boxes: np.ndarray, scores: np.ndarray, det_scores: np.ndarray | None,
                cfg: FaceLogicConfig) -> Detections:
    """NMS, then the output threshold: the same faces as NMS over every candidate, best first."""
    # greedy NMS visits boxes best first, so a box under the output threshold can only suppress
    # boxes under it too: dropping them first gives the same faces and spares the NMS loop the
    # hundreds of low candidates
    above = scores >= cfg.score_thr
    if not above.all():
        boxes, scores = boxes[above], scores[above]
        det_scores = None if det_scores is None else det_scores[above]
    if cfg.device is not None:
        import torch

        keep = nms(torch.from_numpy(boxes).to(cfg.device), torch.from_numpy(scores).to(cfg.device),
                   iou=cfg.nms_iou, max_det=cfg.max_det).cpu().numpy()
    else:
        keep = nms(boxes, scores, iou=cfg.nms_iou, max_det=cfg.max_det)
    return Detections(boxes[keep], scores[keep], None if det_scores is None else det_scores[keep]).sorted()


def detect_faces(rgb: np.ndarray, infer_detector: InferDetector, infer_ranker: InferRanker | None,
                 cfg: FaceLogicConfig, timer: Timer = _no_timer, progress: Progress | None = None) -> Detections:
    """Faces in one HxWx3 uint8 RGB image: candidates, ranker (when given and configured), NMS,
    then the output score threshold."""

    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an HxWx3 uint8 RGB image, got {getattr(rgb, 'shape', type(rgb))}")
    src = rgb
    if cfg.device is not None:  # upload once; every later pixel operation stays on the device
        import torch

        t0 = time.perf_counter()
        src = torch.from_numpy(np.ascontiguousarray(rgb)).to(cfg.device)
        timer("preprocess", time.perf_counter() - t0)
    boxes, scores = detect_candidates(src, infer_detector, cfg, timer, progress)
    det_scores = None
    if infer_ranker is not None and cfg.ranker_boxes and len(boxes):
        boxes, scores, det_scores = rank_candidates(src, boxes, scores, infer_ranker, cfg)
    del src
    t0 = time.perf_counter()
    det = final_faces(boxes, scores, det_scores, cfg)
    timer("nms", time.perf_counter() - t0)
    return det
