"""onnxruntime backend: TensorRT EP, CUDA EP or CPU EP, the best one available."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import BackendUnavailableError, ModelFileError
from rfdeploy.core.metadata import CONTRACT, onnx_metadata
from rfdeploy.runtime.backends.base import Runner


def pick_providers(device: str, available: list[str]) -> list:
    """Providers in preference order for a device; CPU always last as the fallback. The GPU ones
    carry the device's index (onnxruntime's GPU providers run on GPU 0 unless told)."""
    if device.startswith("cuda"):
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise BackendUnavailableError(
                f"device {device} requested but onnxruntime here has only {available}",
                hint="pip install 'rfdeploy[gpu]' (onnxruntime-gpu) or use --device cpu",
            )
        from rfdeploy.engines.runner import parse_device  # InputError for a device that is not cuda[:N]

        index = parse_device(device)
        return [(p, {"device_id": index}) for p in wanted] + ["CPUExecutionProvider"]
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
    refuse a model without rfdeploy's metadata (False for third-party detectors).
    """

    name = "onnxruntime"

    def __init__(self, onnx_path, device: str = "cpu", threads: int | None = None, *, model=None,
                 providers: list[str] | None = None, rfdeploy_model: bool = True):
        super().__init__()
        self.path = Path(onnx_path)
        self.device = device
        if threads is None and os.environ.get("RFDEPLOY_ORT_THREADS"):
            threads = int(os.environ["RFDEPLOY_ORT_THREADS"]) or None
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.session = self._open(model, providers, quiet=not rfdeploy_model)
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
        opts = ort.SessionOptions()
        if quiet:
            opts.log_severity_level = 3  # old third-party exports list weights as inputs; ort warns about each one
        if self.threads:
            opts.intra_op_num_threads = self.threads
        source = str(self.path) if model is None else model.SerializeToString()
        try:
            return ort.InferenceSession(source, opts, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several kinds for a bad file
            raise ModelFileError(f"{self.path} is not a readable ONNX model: onnxruntime cannot load it ({e})") from e

    @property
    def metadata(self) -> dict[str, str]:
        return self._meta

    @property
    def max_batch(self) -> int | None:
        # a symbolic (or unnamed) batch dimension is None or a string; a fixed one an int
        return self._batch_dim if isinstance(self._batch_dim, int) and self._batch_dim > 0 else None

    def describe(self) -> str:
        return f"onnxruntime ({self.session.get_providers()[0]})"

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            self.activate()
        outs = self.session.run(self.output_names, {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()})
        return dict(zip(self.output_names, outs))
