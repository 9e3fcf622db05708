"""TensorRT backend: an engine plan plus its manifest (see rfdeploy.engines).

NOT EXECUTED ON A GPU IN THIS PROJECT'S CI (no GPU that runs TensorRT engines is available
there); the manifest checks it performs before running, and the runner's binding logic against a
fake engine, are tested.

With torch on CUDA it takes device tensors (``accepts_torch``): the pipeline's GPU
pre-processing then feeds the engine directly, and outputs come back as device tensors.
"""

from __future__ import annotations

import threading

import numpy as np

from rfdeploy.core.env import cuda_available
from rfdeploy.engines.manifest import load_manifest
from rfdeploy.engines.runner import TensorRTRunner
from rfdeploy.runtime.backends.base import Runner


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, engine_path, device: str = "cuda:0"):
        super().__init__()
        self.path = engine_path
        self.device_name = str(device)
        self.manifest = load_manifest(engine_path)  # refuses a missing or corrupt manifest
        self._runner = None
        self._activating = threading.Lock()

    @property
    def accepts_torch(self) -> bool:
        """Device tensors go straight in where torch has CUDA (the engine's memory is torch's)."""
        return cuda_available()

    @property
    def device(self):
        """A torch device where torch has CUDA (what the pipeline's device processing reads), else the name."""
        if not cuda_available():
            return self.device_name
        import torch

        return torch.device(self.device_name)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.manifest.metadata)

    @property
    def on_host(self) -> bool:
        return False

    @property
    def max_batch(self) -> int | None:
        """The largest image batch any optimization profile admits."""
        return max(int(p.shapes["image"].max[0]) for p in self.manifest.profiles if "image" in p.shapes)

    def max_input(self) -> tuple[int, int]:
        """Largest (height, width) the profiles admit: tiles must fit inside it."""
        best = max((p.shapes["image"].max for p in self.manifest.profiles), key=lambda s: s[2] * s[3])
        return int(best[2]), int(best[3])

    def min_input(self) -> tuple[int, int]:
        """Smallest (height, width) of the profiles: inputs are padded up to it, so small images
        and passes fit a profile. The same order as ``max_input``."""
        least = min((p.shapes["image"].min for p in self.manifest.profiles), key=lambda s: s[2] * s[3])
        return int(least[2]), int(least[3])

    def activate(self):
        with self._activating:  # workers may call infer before anyone activated
            if self._runner is None:
                self._runner = TensorRTRunner(self.path, device=self.device_name).activate()
            return super().activate()

    def deactivate(self):
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
        super().deactivate()

    def infer(self, feed: dict) -> dict:
        """numpy in, numpy out; a torch tensor in (on the GPU), device tensors out."""
        if not self.active:
            self.activate()
        return self._runner.infer(feed)
