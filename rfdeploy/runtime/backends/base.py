"""The runner interface every backend implements, and the kinds of model file."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import ModelFileError


class Runner(ABC):
    name: str = "runner"
    # True: infer() also takes torch tensors (on the runner's device) and skips the host copy
    accepts_torch: bool = False

    def __init__(self):
        self.active = False

    @property
    @abstractmethod
    def metadata(self) -> dict[str, str]:
        """The model file's metadata (rfdeploy.contract, rfdeploy.config, ...)."""

    @property
    def on_host(self) -> bool:
        """True when the network runs on the CPU (the runtime then tiles for a CPU: see
        rfdeploy.runtime.logic_config)."""
        return True

    @property
    def max_batch(self) -> int | None:
        """Largest batch the model accepts (None: no limit)."""
        return None

    def describe(self) -> str:
        return self.name

    def activate(self) -> "Runner":
        self.active = True
        return self

    def deactivate(self) -> None:
        self.active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...


def model_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".engine", ".plan", ".trt"):
        return "engine"
    if suffix in (".safetensors", ".pt", ".pth", ".bin"):
        return "checkpoint"
    raise ModelFileError(f"{path}: unknown model file type {suffix!r}", hint="use .safetensors/.pt, .onnx or .engine")
