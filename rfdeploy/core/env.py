"""What the running environment offers, asked lazily so heavy optional libraries load only on use:
installed versions, optional imports with the extra that brings them, PyTorch for checkpoints,
a CUDA driver and GPU, and the cache folder."""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
from pathlib import Path

from rfdeploy.core.errors import BackendUnavailableError

TORCH_HINT = 'pip install "rfdeploy[torch]" (or give an .onnx file or an engine, which need no torch)'


def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def backend_versions() -> dict[str, str | None]:
    return {
        "torch": _dist_version("torch"),
        "torchvision": _dist_version("torchvision"),
        "onnx": _dist_version("onnx"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
        "tensorrt_rtx": _dist_version("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx"),
    }


def optional_import(module: str, extra: str):
    """Import an optional dependency or raise a BackendUnavailableError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(
            f"{module} is not importable ({e})", hint=f"pip install 'rfdeploy[{extra}]'"
        ) from e


def require_torch(purpose: str) -> None:
    """A clear error (exit 5) instead of an ImportError where a checkpoint needs PyTorch, which the
    base install (onnxruntime only) does not bring. Called only where torch is about to be used."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(f"{purpose} needs PyTorch ({e})", hint=TORCH_HINT) from None


def cuda_driver_loads() -> bool:
    """Whether a CUDA driver library loads here. Without one there is no CUDA GPU, and nothing
    needs to import torch (seconds of start-up) or the CUDA runtime to find that out."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (False where no CUDA driver loads, without importing torch)."""
    if not cuda_driver_loads():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - torch missing or broken: no GPU for it
        return False


def default_cache_dir() -> Path:
    """``$RFDEPLOY_CACHE``, else ``$XDG_CACHE_HOME/rfdeploy``, else ``~/.cache/rfdeploy``."""
    env = os.environ.get("RFDEPLOY_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "rfdeploy" if xdg else Path.home() / ".cache" / "rfdeploy"
