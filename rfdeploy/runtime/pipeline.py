"""The face pipeline: decode -> detector (tiled for large images) -> ranker -> NMS -> threshold.

Large images (8K and beyond) run as a tile pyramid (rfdeploy.runtime.tiling): full-resolution
tiles in batches, plus downscaled passes for faces too large for a tile. Candidates from all tiles
and passes are merged into one image-level set, ranked once by the ranker (which sees the whole
image, downscaled) and NMS'd once. That logic lives in rfdeploy.runtime.facelogic, shared with the
Triton model; this module opens the models on a backend and times the stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError, ModelFileError, RfdeployError
from rfdeploy.core.image_io import load_image, load_image_bytes
from rfdeploy.core.metadata import CONTRACT, onnx_metadata
from rfdeploy.core.sizes import DEFAULT_AUTO_MAX_INPUT, DEFAULT_TILE_BATCH
from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_DETECTOR_ONNX, DEFAULT_RANKER, DEFAULT_RANKER_ONNX
from rfdeploy.runtime.adapters import OnnxDetector
from rfdeploy.runtime.backends.base import model_kind
from rfdeploy.runtime.backends.selection import open_runner
from rfdeploy.runtime.facelogic import FaceLogicConfig, detect_faces
from rfdeploy.runtime.logic_config import engine_limits, face_logic_config, ranker_runs
from rfdeploy.runtime.models import Detector, Ranker, ThirdPartyDetector
from rfdeploy.runtime.tiling import TilePolicy


@dataclass
class PipelineOptions:
    score_thr: float | None = None  # None: the detector config's output_score_threshold
    candidate_thr: float | None = None  # None: the detector config's score_threshold (0.05)
    nms_iou: float = 0.4
    max_det: int = 750
    tile: str = "auto"  # auto | off | SIZE
    max_untiled: int = DEFAULT_AUTO_MAX_INPUT  # tile auto: images whose long side fits run whole
    tile_batch: int = DEFAULT_TILE_BATCH
    use_ranker: bool = True
    # None: pre/post-processing as torch ops on the GPU when the detector runs in torch on CUDA,
    # else numpy on the host. True forces torch ops (on the detector's device, or the CPU).
    torch_preprocess: bool | None = None

    def __post_init__(self):
        if not 0 < self.nms_iou <= 1:
            raise InputError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.score_thr is not None and not 0 <= self.score_thr <= 1:
            raise InputError(f"score threshold must be in [0, 1], got {self.score_thr}")
        if self.max_det < 1 or self.tile_batch < 1:
            raise InputError("max_det and tile_batch must be >= 1")
        try:  # the one --tile grammar (triton-repo parses the same way)
            self.tile = str(TilePolicy.parse(self.tile))
        except ValueError as e:
            raise InputError(f"--tile: {e}") from None


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
        self.notes = notes if notes is not None else []  # runners add to it later (CUDA graph fallback)
        self._logic = self.logic_config()
        self.score_thr, self.candidate_thr = self._logic.score_thr, self._logic.candidate_thr
        # progress(tiles_done, tiles_total) after each detector batch (the CLI's tile bar)
        self.on_tiles = None

    @classmethod
    def create(cls, *, detector=None, ranker=None, use_ranker: bool | None = None, backend: str = "auto", device: str = "cpu",
               tile: str = "auto", score_thr: float | None = None, nms_iou: float = 0.4, max_det: int = 750,
               adapter=None, onnx_cache=None, fp16: bool = False, tile_batch: int = DEFAULT_TILE_BATCH, engine_cache=None,
               precision: str | None = None, cuda_graph: bool = False,
               torch_preprocess: bool | None = None) -> "FacePipeline":
        """Open the models. ``detector``/``ranker``: .safetensors/.pt checkpoints, rfdeploy .onnx, .engine,
        or (detector only) a third-party ONNX with an adapter. None: the bundled defaults.
        ``use_ranker``: None (default) runs the ranker only when ``ranker`` is given, as ``infer``
        does; True adds the bundled ranker when none is given; False runs the detector alone.

        With TensorRT (``backend="tensorrt"``, or ``auto`` where TensorRT and a CUDA GPU are present)
        checkpoints and ONNX files are built into engines for this GPU on first use, into
        ``engine_cache`` (default ``$RFDEPLOY_ENGINE_CACHE``), at ``precision`` (fp32|fp16; None:
        fp16 when ``fp16``). ``cuda_graph``: the torch backend on CUDA replays captured graphs.
        ``torch_preprocess``: see PipelineOptions."""
        notes: list[str] = []
        det_path = Path(detector) if detector else bundled_model("detector", backend)
        if not det_path.is_file():
            raise InputError(f"detector model not found: {det_path}")
        _check_model_suffix(det_path, "detector")
        if detector and det_path.suffix.lower() == ".onnx" and (
                adapter is not None or not _has_rfdeploy_metadata(det_path)):
            asked = [flag for flag, on in ((f"--backend {backend}", backend in ("tensorrt", "torch")),
                                           ("--fp16", fp16), ("--cuda-graph", cuda_graph)) if on]
            if asked:
                raise InputError(f"{det_path.name} is a third-party ONNX detector: it runs on onnxruntime only, "
                                 f"so {', '.join(asked)} cannot apply to it",
                                 hint="drop those options; --device cuda runs it on onnxruntime's CUDA provider")
            det = ThirdPartyDetector(OnnxDetector(det_path, adapter=adapter, device=device))
            notes.append(f"third-party detector {det.name} ({det_path.name}) through {det.onnx.runner.describe()}")
        else:
            runner = open_runner(det_path, backend=backend, device=device, fp16=fp16, onnx_cache=onnx_cache,
                                 engine_cache=engine_cache, precision=precision, notes=notes, cuda_graph=cuda_graph)
            det = Detector(runner.activate())
            notes.append(f"detector {det.name}: {runner.describe()}")
        rank = None
        use_ranker = ranker_runs(ranker, use_ranker)
        if use_ranker:
            rank_path = Path(ranker) if ranker else bundled_model("ranker", backend)
            if not rank_path.is_file():
                raise InputError(f"ranker model not found: {rank_path}", hint="or run with --no-ranker")
            _check_model_suffix(rank_path, "ranker")
            # tensorrt builds the ranker's engine too when it is given as a checkpoint or ONNX file
            # the ranker's onnxruntime threads must not spin after its call: they would take the
            # cores from the detector's next call
            rrunner = open_runner(rank_path, backend=backend, device=device, fp16=fp16, onnx_cache=onnx_cache,
                                  engine_cache=engine_cache, precision=precision, notes=notes, cuda_graph=cuda_graph,
                                  spin=False)
            rank = Ranker(rrunner.activate())
            notes.append(f"ranker {rank.cfg.name} (N={rank.num_boxes}): {rrunner.describe()}")
        opts = PipelineOptions(score_thr=score_thr, nms_iou=nms_iou, max_det=max_det, tile=tile,
                               use_ranker=use_ranker, tile_batch=tile_batch, torch_preprocess=torch_preprocess)
        pipe = cls(det, rank, opts, notes)
        if pipe._logic.device is not None:
            notes.append(f"pre/post-processing: torch ops on {pipe._logic.device}")
        return pipe

    # -- detection --------------------------------------------------------------------------

    def logic_config(self) -> FaceLogicConfig:
        """What the shared face logic (tiling, merging, ranking, NMS) needs from these models: the
        factory the Triton repository's faces model uses too."""
        runner = getattr(self.detector, "runner", None)
        o = self.options
        return face_logic_config(
            detector_contract=self.detector.contract,
            detector_config=self.detector.cfg,
            ranker_contract=self.ranker.contract if self.ranker else None,
            ranker_boxes=self.ranker.num_boxes if self.ranker else 0,
            ranker_config=self.ranker.cfg if self.ranker else None,
            # engines: every batch, image and tile fits one of the detector's profiles
            detector_limits=engine_limits(getattr(runner, "manifest", None), self.detector.contract),
            ranker_limits=engine_limits(getattr(getattr(self.ranker, "runner", None), "manifest", None),
                                        self.ranker.contract) if self.ranker else None,
            network_max_batch=self.detector.max_batch,
            tile=o.tile,
            tile_batch=o.tile_batch,
            max_untiled=o.max_untiled,
            score_thr=o.score_thr,
            candidate_thr=o.candidate_thr,
            nms_iou=o.nms_iou,
            max_det=o.max_det,
            device=self._processing_device(runner),
            host_network=getattr(runner, "on_host", True),
        )

    def _processing_device(self, runner) -> str | None:
        """Where pre/post-processing runs: the GPU of a torch detector, else the host (None)."""
        device = getattr(runner, "device", None) if getattr(runner, "accepts_torch", False) else None
        choice = self.options.torch_preprocess
        if choice is None:
            return str(device) if device is not None and device.type == "cuda" else None
        return (str(device) if device is not None else "cpu") if choice else None

    def detect(self, rgb: np.ndarray, timings: Timings | None = None) -> Detections:
        timings = timings if timings is not None else Timings()

        def timed(fn, stage):
            def call(*args):
                t = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    timings.add(stage, time.perf_counter() - t)
            return call

        return detect_faces(
            rgb, timed(self.detector.run_batch, "detector"),
            timed(self.ranker.infer, "ranker") if self.ranker else None,
            self._logic, timings.add, self.on_tiles,
        )

    def process_path(self, path, data: bytes | None = None) -> dict:
        """Decode + detect one file -> the JSON record written by `infer --out`. ``data``: the
        file's encoded bytes already in memory (a URI read from object storage); ``path`` then
        only names it."""
        timings = Timings()
        t = time.perf_counter()
        img = load_image(path) if data is None else load_image_bytes(data, name=str(path))
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


def bundled_model(role: str, backend: str = "auto") -> Path:
    """The bundled detector or ranker for a backend: its checkpoint for torch, else the ONNX file
    shipped beside it (nothing to export, and no torch needed to run it)."""
    checkpoint, onnx_file = ((DEFAULT_DETECTOR, DEFAULT_DETECTOR_ONNX) if role == "detector"
                             else (DEFAULT_RANKER, DEFAULT_RANKER_ONNX))
    return checkpoint if backend == "torch" else onnx_file


def error_record(path, exc: BaseException) -> dict:
    """A failed input: kept in the results with its reason, never dropped silently."""
    return {"file": str(path), "error": str(exc).split("\n")[0], "error_type": type(exc).__name__,
            "exit_code": getattr(exc, "exit_code", 1) if isinstance(exc, RfdeployError) else 1}


def _check_model_suffix(path: Path, role: str) -> None:
    """A file that is no kind of model (a photo, a text file) given as a model: a model file of the
    wrong kind (exit 3), not a bad image."""
    try:
        model_kind(path)
    except ModelFileError as e:
        raise ModelFileError(f"{path} is not a {role} model: {e.args[0].split(': ', 1)[-1]}", hint=e.hint) from None


def _has_rfdeploy_metadata(path: Path) -> bool:
    try:
        return CONTRACT in onnx_metadata(path)
    except ModelFileError:
        return True  # let the rfdeploy loader report the broken file
