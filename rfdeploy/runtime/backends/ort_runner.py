"""onnxruntime backend: TensorRT EP, CUDA EP or CPU EP, the best one available."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import BackendUnavailableError, ModelFileError
from rfdeploy.core.metadata import CONTRACT, onnx_metadata
from rfdeploy.runtime.backends.base import Runner


def pick_providers(device: str, available: list[str]) -> list[str]:
    """Providers in preference order for a device; CPU always last as the fallback."""
    if device.startswith("cuda"):
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise BackendUnavailableError(
                f"device {device} requested but onnxruntime here has only {available}",
                hint="pip install 'rfdeploy[gpu]' (onnxruntime-gpu) or use --device cpu",
            )
        return wanted + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner(Runner):
    """An rfdeploy ONNX file on onnxruntime. The model's metadata and input signature are read
    from the session itself (onnxruntime parses the file anyway), so running a model never
    imports the onnx package, whose start-up costs about a second of CPU."""

    name = "onnxruntime"

    def __init__(self, onnx_path, device: str = "cpu", threads: int | None = None):
        super().__init__()
        self.path = Path(onnx_path)
        self.device = device
        self.threads = threads
        self.session = self._open()
        self._meta = onnx_metadata(self.session)
        if CONTRACT not in self._meta:
            raise ModelFileError(
                f"{self.path} carries no rfdeploy metadata (not exported by rfdeploy)",
                hint="third-party detectors go through --detector with an adapter",
            )
        self._batch_dim = self.session.get_inputs()[0].shape[0]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _open(self):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(f"onnxruntime is not importable ({e})", hint="pip install onnxruntime") from e
        if not self.path.is_file():
            raise ModelFileError(f"ONNX file not found: {self.path}")
        providers = pick_providers(self.device, ort.get_available_providers())
        opts = ort.SessionOptions()
        if self.threads or os.environ.get("RFDEPLOY_ORT_THREADS"):
            opts.intra_op_num_threads = int(self.threads or os.environ["RFDEPLOY_ORT_THREADS"])
        try:
            return ort.InferenceSession(str(self.path), opts, providers=providers)
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
        outs = self.session.run(self._outputs, {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()})
        return dict(zip(self._outputs, outs))
