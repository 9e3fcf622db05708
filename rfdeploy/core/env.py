"""What the running environment offers, asked lazily so heavy optional libraries load only on use."""

from __future__ import annotations

import importlib
import importlib.metadata


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
    from rfdeploy.core.errors import BackendUnavailableError

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(
            f"{module} is not importable ({e})", hint=f"pip install 'rfdeploy[{extra}]'"
        ) from e
