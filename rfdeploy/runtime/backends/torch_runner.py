"""The reference backend: the PyTorch module itself (CPU or CUDA; fp16 on CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfdeploy.errors import BackendUnavailableError
from rfdeploy.runtime.backends.base import Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, checkpoint_or_module, device: str = "cpu", fp16: bool = False):
        super().__init__()
        import torch

        from rfdeploy.export.onnx_export import model_metadata

        if isinstance(checkpoint_or_module, torch.nn.Module):
            self.model, sha = checkpoint_or_module, None
        else:
            from rfdeploy.models import load
            from rfdeploy.models.checkpoint import sha256_file

            self.model, sha = load(Path(checkpoint_or_module)), sha256_file(checkpoint_or_module)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device} requested but CUDA is not available")
        if fp16 and not device.startswith("cuda"):
            raise BackendUnavailableError("fp16 with the torch backend needs a CUDA device")
        self.device = torch.device(device)
        self.fp16 = fp16
        # the same metadata an export writes: one definition of the contract
        self._meta = model_metadata(self.model.cfg, sha)
        self.is_detector = self._meta["rfdeploy.kind"] == "detector"

    @property
    def metadata(self) -> dict[str, str]:
        return self._meta

    def describe(self) -> str:
        return f"torch ({self.device}{', fp16' if self.fp16 else ''})"

    def activate(self):
        import torch

        self.model = self.model.to(self.device).eval()
        if self.fp16:
            self.model = self.model.half().to(memory_format=torch.channels_last)
        return super().activate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if not self.active:
            self.activate()
        dtype = torch.float16 if self.fp16 else torch.float32
        with torch.inference_mode():
            image = torch.as_tensor(feed["image"], device=self.device).to(dtype)
            if self.is_detector:
                boxes, scores = self.model(image)
                return {"boxes": boxes.float().cpu().numpy(), "scores": scores.float().cpu().numpy()}
            cand = torch.as_tensor(feed["boxes"], device=self.device).to(dtype)
            return {"scores": self.model(image, cand).float().cpu().numpy()}
