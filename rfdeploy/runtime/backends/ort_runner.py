"""onnxruntime backend: CUDA EP or CPU EP, the best one available."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import BackendUnavailableError, ModelFileError
from rfdeploy.core.metadata import CONTRACT, onnx_metadata
from rfdeploy.runtime.backends.base import Runner


def pick_providers(device: str, available: list[str]) -> list:
    """Providers in preference order for a device; CPU always last as the fallback. The GPU ones
    carry the device's index (onnxruntime's GPU providers run on GPU 0 unless told).

    Not onnxruntime's TensorRT EP: without an engine cache and shape profiles it builds an engine
    at every start and again whenever a tile or image shape falls outside those seen so far
    (minutes that look like a hang). TensorRT runs through ``--backend tensorrt``, whose engines
    are built once with the runtime's profiles and cached (rfdeploy.engines.engine_cache)."""
    if device.startswith("cuda"):
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available]
        if not wanted:
            raise BackendUnavailableError(
                f"device {device} requested but onnxruntime here has only {available}",
                hint="pip install 'rfdeploy[gpu]' (onnxruntime-gpu) or use --device cpu",
            )
        from rfdeploy.engines.runner import parse_device  # InputError for a device that is not cuda[:N]

        index = parse_device(device)
        # use_tf32 0: float32 convolutions in float32, as on the CPU and in the fp32 engines
        # (rfdeploy.engines.build.keep_float32_exact); the fp16 files are the fast ones
        return [(p, {"device_id": index, "use_tf32": 0}) for p in wanted] + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner(Runner):
    """An ONNX model on onnxruntime: rfdeploy's own exports and, behind their adapters, third-party
    detectors (rfdeploy.runtime.adapters.OnnxDetector), so both get the same providers, threads and
    errors. The model's metadata and input signature are read from the session itself
    (onnxruntime parses the file anyway), so running a model never imports the onnx package, whose
    start-up costs about a second of CPU.

    ``model``: an ``onnx.ModelProto`` to run in place of the file's own graph (a third-party
    detector as its adapter rewrote it); ``onnx_path`` still names it in messages. ``providers``:
    onnxruntime's providers in order (default: the best for ``device``, CPU last). ``threads``:
    intra-op threads (default ``$RFDEPLOY_ORT_THREADS``, else onnxruntime's). ``rfdeploy_model``:
    refuse a model without rfdeploy's metadata (False for third-party detectors). ``spin=False``:
    the worker threads sleep as soon as a call ends instead of spinning for the next one; for the
    second network of a pipeline (the ranker), whose spinning threads otherwise take the cores
    from the detector's next call (measured at VGA: the detector's time doubled).

    ``specialise`` (CPU only; default on, ``$RFDEPLOY_ORT_SPECIALISE=0`` turns it off): an input
    shape seen ``SPECIALISE_AFTER`` times (video frames, photos from one camera), of at most
    ``MAX_SPECIALISED_ELEMENTS`` input values, gets a session built for that shape. With every
    dimension known, onnxruntime folds the graph's shape arithmetic (anchor grids, level offsets)
    into constants and drops the nodes that computed it. One-off shapes keep the generic session, so a folder of photos of many sizes
    never pays a session build per photo. At most ``MAX_SPECIALISED`` are kept, least recently
    used dropped; the generic session then gives its memory arena back after each run, so the
    memory a shape needs is held once.
    """

    name = "onnxruntime"
    SPECIALISE_AFTER = 2
    MAX_SPECIALISED = 2
    # feeds up to a padded 1080p frame: measured at 8K (33 MP in one pass) a fixed-shape session
    # ran RetinaFace at half speed and with 1 GB more memory, while VGA gains and 3 MP tiles
    # gain little
    MAX_SPECIALISED_ELEMENTS = 3 * 1088 * 1920

    def __init__(self, onnx_path, device: str = "cpu", threads: int | None = None, *, model=None,
                 providers: list[str] | None = None, rfdeploy_model: bool = True, specialise: bool | None = None,
                 spin: bool = True):
        super().__init__()
        self.path = Path(onnx_path)
        self.device = device
        self.spin = spin
        if threads is None and os.environ.get("RFDEPLOY_ORT_THREADS"):
            threads = int(os.environ["RFDEPLOY_ORT_THREADS"]) or None
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._quiet = not rfdeploy_model
        self._source = str(self.path) if model is None else model.SerializeToString()
        self.session = self._open(model, providers, quiet=self._quiet)
        if specialise is None:
            specialise = os.environ.get("RFDEPLOY_ORT_SPECIALISE", "1") != "0"
        # named symbolic dimensions only: onnxruntime overrides free dimensions by name
        dims = [d for i in self.session.get_inputs() for d in i.shape if not isinstance(d, int)]
        named = bool(dims) and all(isinstance(d, str) and d for d in dims)
        self.specialise = bool(specialise) and named and self.session.get_providers() == ["CPUExecutionProvider"]
        self._seen: dict[tuple, int] = {}
        self._fixed: OrderedDict[tuple, object] = OrderedDict()
        self._refused: set[tuple] = set()
        self._lock = threading.Lock()
        self._generic_run_options = None
        if self.specialise:
            import onnxruntime as ort

            self._generic_run_options = ort.RunOptions()
            self._generic_run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._meta = onnx_metadata(self.session)
        if rfdeploy_model and CONTRACT not in self._meta:
            raise ModelFileError(
                f"{self.path} carries no rfdeploy metadata (not exported by rfdeploy)",
                hint="third-party detectors go through --detector with an adapter",
            )
        self._batch_dim = self.session.get_inputs()[0].shape[0]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _open(self, model, providers: list[str] | None, quiet: bool):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(f"onnxruntime is not importable ({e})", hint="pip install onnxruntime") from e
        if model is None and not self.path.is_file():
            raise ModelFileError(f"ONNX file not found: {self.path}")
        available = ort.get_available_providers()
        if providers is None:
            providers = pick_providers(self.device, available)
        missing = [n for n in (p[0] if isinstance(p, tuple) else p for p in providers) if n not in available]
        if missing:
            raise BackendUnavailableError(f"onnxruntime providers {missing} are not available here (available: {available})")
        return self._session(list(providers), quiet)

    def _session(self, providers: list, quiet: bool, dims: dict[str, int] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        for name, size in (dims or {}).items():
            opts.add_free_dimension_override_by_name(name, size)
        if quiet:
            opts.log_severity_level = 3  # old third-party exports list weights as inputs; ort warns about each one
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if not self.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(self._source, opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several kinds for a bad file
            raise ModelFileError(f"{self.path} is not a readable ONNX model: onnxruntime cannot load it ({e})") from e

    @property
    def metadata(self) -> dict[str, str]:
        return self._meta

    @property
    def max_batch(self) -> int | None:
        # a symbolic (or unnamed) batch dimension is None or a string; a fixed one an int
        return self._batch_dim if isinstance(self._batch_dim, int) and self._batch_dim > 0 else None

    @property
    def on_host(self) -> bool:
        return self.session.get_providers()[0] == "CPUExecutionProvider"

    def describe(self) -> str:
        return f"onnxruntime ({self.session.get_providers()[0]})"

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            self.activate()
        feed = {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()}
        session, options = (self._session_for(feed) if self.specialise else (self.session, None))
        outs = session.run(self.output_names, feed, options)
        return dict(zip(self.output_names, outs))

    def _dims_of(self, feed: dict[str, np.ndarray]) -> dict[str, int] | None:
        """Each free dimension's size in this feed; None when a name has two sizes or an input
        is missing or of the wrong rank (the generic session then reports it)."""
        dims: dict[str, int] = {}
        for inp in self.session.get_inputs():
            x = feed.get(inp.name)
            if x is None or x.ndim != len(inp.shape):
                return None
            for d, n in zip(inp.shape, x.shape):
                if isinstance(d, str) and dims.setdefault(d, int(n)) != n:
                    return None
        return dims

    def _session_for(self, feed: dict[str, np.ndarray]):
        """(session, run options) for this feed's shapes: a specialised session once the shapes
        have repeated, else the generic one (which then shrinks its arena after the run)."""
        key = tuple((k, v.shape) for k, v in sorted(feed.items()))
        with self._lock:
            s = self._fixed.get(key)
            if s is not None:
                self._fixed.move_to_end(key)
                return s, None
            n = self._seen[key] = self._seen.get(key, 0) + 1
            if len(self._seen) > 256:  # a long run of one-off sizes: forget the oldest counts
                self._seen = dict(list(self._seen.items())[-128:])
            small = sum(v.size for v in feed.values()) <= self.MAX_SPECIALISED_ELEMENTS
            dims = self._dims_of(feed) if n >= self.SPECIALISE_AFTER and small and key not in self._refused else None
            if dims:
                try:
                    s = self._session(self.session.get_providers(), self._quiet, dims)
                except ModelFileError:
                    s = None  # a graph onnxruntime cannot specialise: it keeps running generic
                    self._refused.add(key)
                if s is not None:
                    self._fixed[key] = s
                    if len(self._fixed) > self.MAX_SPECIALISED:
                        self._fixed.popitem(last=False)
                    return s, None
        return self.session, self._generic_run_options

    @property
    def specialised_shapes(self) -> list[tuple]:
        """The feed shapes that have a session of their own, least recently used first."""
        with self._lock:
            return list(self._fixed)
