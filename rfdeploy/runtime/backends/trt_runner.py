"""TensorRT backend: an engine plan plus its manifest (see rfdeploy.engines).

NOT EXECUTED IN THIS PROJECT'S CI (no GPU that runs TensorRT engines is available there); the
manifest checks it performs before running are tested.
"""

from __future__ import annotations

import numpy as np

from rfdeploy.engines.manifest import load_manifest
from rfdeploy.runtime.backends.base import Runner


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, engine_path, device: str = "cuda:0"):
        super().__init__()
        self.path = engine_path
        self.device = device
        self.manifest = load_manifest(engine_path)  # refuses a missing or corrupt manifest
        self._runner = None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.manifest.metadata)

    @property
    def max_batch(self) -> int | None:
        """The largest image batch any optimization profile admits."""
        return max(int(p.shapes["image"].max[0]) for p in self.manifest.profiles if "image" in p.shapes)

    def max_input(self) -> tuple[int, int]:
        """Largest (height, width) the profiles admit: tiles must fit inside it."""
        best = max((p.shapes["image"].max for p in self.manifest.profiles), key=lambda s: s[2] * s[3])
        return int(best[2]), int(best[3])

    def min_input(self) -> tuple[int, int]:
        """(width, height) inputs are padded up to, so small images and passes fit a profile."""
        least = min((p.shapes["image"].min for p in self.manifest.profiles), key=lambda s: s[2] * s[3])
        return int(least[3]), int(least[2])

    def activate(self):
        from rfdeploy.engines.runner import TensorRTRunner

        if self._runner is None:
            self._runner = TensorRTRunner(self.path, device=self.device).activate()
        return super().activate()

    def deactivate(self):
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
        super().deactivate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            self.activate()
        out = self._runner.infer(feed)
        return {k: (v.cpu().numpy() if hasattr(v, "cpu") else np.asarray(v)) for k, v in out.items()}
