"""onnxruntime backend: TensorRT EP, CUDA EP or CPU EP, the best one available."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rfdeploy.errors import BackendUnavailableError, ModelFileError
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
    name = "onnxruntime"

    def __init__(self, onnx_path, device: str = "cpu", threads: int | None = None):
        super().__init__()
        self.path = Path(onnx_path)
        self.device = device
        self.threads = threads
        self.session = None
        try:
            import onnx

            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:
            raise ModelFileError(f"{self.path} is not a readable ONNX model: {e}") from e
        self._meta = {p.key: p.value for p in model.metadata_props}
        if "rfdeploy.contract" not in self._meta:
            raise ModelFileError(
                f"{self.path} carries no rfdeploy metadata (not exported by rfdeploy)",
                hint="third-party detectors go through --detector with an adapter",
            )
        self._batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]

    @property
    def metadata(self) -> dict[str, str]:
        return self._meta

    @property
    def max_batch(self) -> int | None:
        return None if self._batch_dim.dim_param or not self._batch_dim.dim_value else self._batch_dim.dim_value

    def activate(self):
        import onnxruntime as ort

        if self.session is None:
            providers = pick_providers(self.device, ort.get_available_providers())
            opts = ort.SessionOptions()
            if self.threads or os.environ.get("RFDEPLOY_ORT_THREADS"):
                opts.intra_op_num_threads = int(self.threads or os.environ["RFDEPLOY_ORT_THREADS"])
            try:
                self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
            except Exception as e:
                raise ModelFileError(f"onnxruntime cannot load {self.path}: {e}") from e
        return super().activate()

    def describe(self) -> str:
        used = self.session.get_providers()[0] if self.session else "not active"
        return f"onnxruntime ({used})"

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            self.activate()
        names = [o.name for o in self.session.get_outputs()]
        outs = self.session.run(names, {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()})
        return dict(zip(names, outs))
