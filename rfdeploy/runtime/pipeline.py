"""The face pipeline: decode -> detector (tiled for large images) -> ranker -> NMS -> threshold.

Large images (8K and beyond) run as a tile pyramid (rfdeploy.runtime.tiling): full-resolution
tiles in batches, plus downscaled passes for faces too large for a tile. Candidates from all tiles
and passes are merged into one image-level set, ranked once by the ranker (which sees the whole
image, downscaled) and NMS'd once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rfdeploy.errors import InputError, RfdeployError
from rfdeploy.runtime.detections import Detections
from rfdeploy.runtime.nms import nms
from rfdeploy.runtime.preprocess import padded_size, preprocess
from rfdeploy.runtime.tiling import choose_tile_size, drop_cut_boxes, plan_pyramid, to_image_coords

# The largest anchor is 2*sqrt(2)*128 = 362 px: faces beyond it are found in a downscaled pass.
MAX_FACE_AT_TILE = 362
MIN_FACE_AT_TILE = 16
SEAM_MARGIN = 2


@dataclass
class PipelineOptions:
    score_thr: float | None = None  # None: the detector config's output_score_threshold
    candidate_thr: float | None = None  # None: the detector config's score_threshold (0.05)
    nms_iou: float = 0.4
    max_det: int = 750
    tile: str = "auto"  # auto | off | SIZE
    max_untiled: int = 2048  # tile auto: images whose long side fits run whole
    tile_batch: int = 8
    use_ranker: bool = True

    def __post_init__(self):
        if not 0 < self.nms_iou <= 1:
            raise InputError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.score_thr is not None and not 0 <= self.score_thr <= 1:
            raise InputError(f"score threshold must be in [0, 1], got {self.score_thr}")
        if self.max_det < 1 or self.tile_batch < 1:
            raise InputError("max_det and tile_batch must be >= 1")


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def as_ms(self) -> dict[str, float]:
        return {k: round(v * 1000, 2) for k, v in self.stages.items()}


class FacePipeline:
    def __init__(self, detector, ranker=None, options: PipelineOptions | None = None, notes: list[str] | None = None):
        self.detector = detector
        self.ranker = ranker
        self.options = options or PipelineOptions()
        self.notes = list(notes or [])
        cfg = getattr(detector, "cfg", None)
        self.score_thr = self.options.score_thr if self.options.score_thr is not None else (
            cfg.output_score_threshold if cfg else 0.5)
        self.candidate_thr = self.options.candidate_thr if self.options.candidate_thr is not None else (
            cfg.score_threshold if cfg else 0.02)

    @classmethod
    def create(cls, *, detector=None, ranker=None, use_ranker: bool = True, backend: str = "auto", device: str = "cpu",
               tile: str = "auto", score_thr: float | None = None, nms_iou: float = 0.4, max_det: int = 750,
               adapter=None, onnx_cache=None, fp16: bool = False, tile_batch: int = 8) -> "FacePipeline":
        """Open the models. ``detector``/``ranker``: .safetensors/.pt checkpoints, rfdeploy .onnx, .engine,
        or (detector only) a third-party ONNX with an adapter. None: the bundled defaults."""
        from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_RANKER
        from rfdeploy.runtime.backends.base import open_runner
        from rfdeploy.runtime.models import Detector, Ranker, ThirdPartyDetector

        notes: list[str] = []
        det_path = Path(detector) if detector else DEFAULT_DETECTOR
        if not det_path.is_file():
            raise InputError(f"detector model not found: {det_path}")
        if det_path.suffix.lower() == ".onnx" and (adapter is not None or not _has_rfdeploy_metadata(det_path)):
            from rfdeploy.runtime.adapters import OnnxDetector

            det = ThirdPartyDetector(OnnxDetector(det_path, adapter=adapter))
            notes.append(f"third-party detector {det.name} ({det_path.name}) through onnxruntime")
        else:
            runner = open_runner(det_path, backend=backend, device=device, fp16=fp16, onnx_cache=onnx_cache, notes=notes)
            det = Detector(runner.activate())
            notes.append(f"detector {det.name}: {runner.describe()}")
        rank = None
        if use_ranker:
            rank_path = Path(ranker) if ranker else DEFAULT_RANKER
            if not rank_path.is_file():
                raise InputError(f"ranker model not found: {rank_path}", hint="or run with --no-ranker")
            # an engine for the detector does not imply one for the ranker: auto picks per file
            rb = backend if backend != "tensorrt" or rank_path.suffix in (".engine", ".plan") else "auto"
            rrunner = open_runner(rank_path, backend=rb, device=device, fp16=fp16, onnx_cache=onnx_cache, notes=notes)
            rank = Ranker(rrunner.activate())
            notes.append(f"ranker {rank.cfg.name} (N={rank.num_boxes}): {rrunner.describe()}")
        opts = PipelineOptions(score_thr=score_thr, nms_iou=nms_iou, max_det=max_det, tile=tile,
                               use_ranker=use_ranker, tile_batch=tile_batch)
        return cls(det, rank, opts, notes)

    # -- detection --------------------------------------------------------------------------

    def tile_size(self, width: int, height: int) -> int | None:
        max_input = self.options.max_untiled
        return choose_tile_size(width, height, self.options.tile, max_input=max(max_input, 1024))

    def candidates(self, rgb: np.ndarray, timings: Timings | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Image-level candidates (before ranking and NMS), tiled when the image is large."""
        timings = timings or Timings()
        h, w = rgb.shape[:2]
        tile = self.tile_size(w, h)
        t = time.perf_counter()
        if tile is None or not hasattr(self.detector, "run_batch"):
            if tile is not None:
                boxes, scores = self._tiled_single(rgb, tile)
            else:
                boxes, scores = self.detector.candidates(rgb)
            timings.add("detector", time.perf_counter() - t)
        else:
            boxes, scores = self._tiled(rgb, tile, timings)
        keep = scores >= self.candidate_thr
        return boxes[keep], scores[keep]

    def _tiled(self, rgb: np.ndarray, tile: int, timings: Timings):
        from PIL import Image

        h, w = rgb.shape[:2]
        max_face = min(MAX_FACE_AT_TILE, tile - 2 * SEAM_MARGIN - 1)
        plan = plan_pyramid(w, h, tile, max_face, MIN_FACE_AT_TILE, SEAM_MARGIN)
        contract = self.detector.contract
        batch = min(self.options.tile_batch, self.detector.max_batch or self.options.tile_batch)
        all_b, all_s = [], []
        for p in plan.passes:
            t = time.perf_counter()
            img = rgb if (p.width, p.height) == (w, h) else np.asarray(
                Image.fromarray(rgb).resize((p.width, p.height), Image.BILINEAR))
            timings.add("preprocess", time.perf_counter() - t)
            th, tw = p.tile_shape
            shape = padded_size(tw, th, contract.pad_multiple)
            for i in range(0, len(p.tiles), batch):
                group = p.tiles[i:i + batch]
                t = time.perf_counter()
                # memory stays bounded by one batch of tiles, whatever the image size
                x = np.concatenate([preprocess(np.ascontiguousarray(tl.crop(img)), contract, min_size=shape)[0] for tl in group])
                t1 = time.perf_counter()
                boxes, scores = self.detector.run_batch(x)
                t2 = time.perf_counter()
                for tl, b, s in zip(group, boxes, scores):
                    k = s > 0
                    b = np.clip(b[k], 0, [tl.width, tl.height, tl.width, tl.height])
                    b, s = drop_cut_boxes(b, s[k], tl, p.width, p.height, SEAM_MARGIN)
                    r = p.responsible(b)
                    all_b.append(to_image_coords(b[r], tl, p.scale))
                    all_s.append(s[r])
                timings.add("preprocess", t1 - t)
                timings.add("detector", t2 - t1)
                timings.add("merge", time.perf_counter() - t2)
        if not all_b:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(all_b).astype(np.float32), np.concatenate(all_s).astype(np.float32)

    def _tiled_single(self, rgb: np.ndarray, tile: int):
        """Tiling for detectors without batched tensors (third-party adapters): tile by tile."""
        from PIL import Image

        h, w = rgb.shape[:2]
        max_face = min(MAX_FACE_AT_TILE, tile - 2 * SEAM_MARGIN - 1)
        plan = plan_pyramid(w, h, tile, max_face, MIN_FACE_AT_TILE, SEAM_MARGIN)
        out_b, out_s = [], []
        for p in plan.passes:
            img = rgb if (p.width, p.height) == (w, h) else np.asarray(Image.fromarray(rgb).resize((p.width, p.height), Image.BILINEAR))
            for tl in p.tiles:
                b, s = self.detector.candidates(np.ascontiguousarray(tl.crop(img)))
                b, s = drop_cut_boxes(b, s, tl, p.width, p.height, SEAM_MARGIN)
                r = p.responsible(b)
                out_b.append(to_image_coords(b[r], tl, p.scale))
                out_s.append(s[r])
        return np.concatenate(out_b).astype(np.float32), np.concatenate(out_s).astype(np.float32)

    def detect(self, rgb: np.ndarray, timings: Timings | None = None) -> Detections:
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError("detect() takes an HxWx3 uint8 RGB array")
        timings = timings if timings is not None else Timings()
        boxes, scores = self.candidates(rgb, timings)
        det_scores = None
        if self.ranker is not None and len(scores):
            t = time.perf_counter()
            boxes, scores, det_scores = self.ranker.rerank(rgb, boxes, scores)
            timings.add("ranker", time.perf_counter() - t)
        t = time.perf_counter()
        keep = nms(boxes, scores, self.options.nms_iou, self.options.max_det)
        dets = Detections(boxes[keep], scores[keep], None if det_scores is None else det_scores[keep])
        dets = dets.filter(self.score_thr).sorted()
        timings.add("nms", time.perf_counter() - t)
        return dets

    def process_path(self, path) -> dict:
        """Decode + detect one file -> the JSON record written by `infer --out`."""
        from rfdeploy.runtime.image_io import load_image

        timings = Timings()
        t = time.perf_counter()
        img = load_image(path)
        timings.add("decode", time.perf_counter() - t)
        dets = self.detect(img.rgb, timings)
        rec = {
            "file": str(path),
            "width": img.width,
            "height": img.height,
            "faces": dets.to_json(),
            "timings_ms": timings.as_ms(),
        }
        if img.notes:
            rec["notes"] = list(img.notes)
        return rec


def error_record(path, exc: BaseException) -> dict:
    """A failed input: kept in the results with its reason, never dropped silently."""
    return {"file": str(path), "error": str(exc).split("\n")[0], "error_type": type(exc).__name__,
            "exit_code": getattr(exc, "exit_code", 1) if isinstance(exc, RfdeployError) else 1}


def _has_rfdeploy_metadata(path: Path) -> bool:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return True  # let the rfdeploy loader report the broken file
    return any(p.key == "rfdeploy.contract" for p in m.metadata_props)
