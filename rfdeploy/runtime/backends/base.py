"""The runner interface and the choice of backend for a model file."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import BackendUnavailableError, InputError, ModelFileError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


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
    raise InputError(f"{path}: unknown model file type {suffix!r}", hint="use .safetensors/.pt, .onnx or .engine")


TORCH_HINT = 'pip install "rfdeploy[torch]" (or give an .onnx file or an engine, which need no torch)'


def require_torch(purpose: str) -> None:
    """A clear error (exit 5) instead of an ImportError where a checkpoint needs PyTorch, which the
    base install (onnxruntime only) does not bring. Called only where torch is about to be used."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(f"{purpose} needs PyTorch ({e})", hint=TORCH_HINT) from None


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU. Where no CUDA driver library loads there can be none, and
    torch is not imported at all (seconds of start-up that an onnxruntime run does not need)."""
    if not _cuda_driver_loads():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _cuda_driver_loads() -> bool:
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def open_runner(path: str | os.PathLike, *, backend: str = "auto", device: str = "cpu", fp16: bool = False,
                onnx_cache: str | os.PathLike | None = None, engine_cache: str | os.PathLike | None = None,
                precision: str | None = None, notes: list[str] | None = None, cuda_graph: bool = False) -> Runner:
    """A runner for a model file.

    tensorrt: an engine file as it is; a checkpoint or ONNX file is exported (once, into
    ``onnx_cache``) and built into a TensorRT engine for this GPU (once, into ``engine_cache``; see
    rfdeploy.runtime.backends.engine_cache). auto: the same when a TensorRT module imports and a CUDA
    GPU is visible, else onnxruntime (a checkpoint is exported to ONNX once), else torch.
    ``precision`` (fp32|fp16) is the precision of engines built here; None: fp16 when ``fp16``.
    ``cuda_graph``: the torch backend replays CUDA graphs per input shape (torch backend only).
    What was chosen, and why, goes into ``notes``.
    """
    notes = notes if notes is not None else []
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if precision not in (None, "fp32", "fp16"):
        raise InputError(f"engine precision must be fp32 or fp16, got {precision!r}")
    kind = model_kind(path)
    if cuda_graph and backend != "torch":
        raise InputError("CUDA graphs are a torch-backend option", hint="add --backend torch --device cuda")
    trt_device = device if device.startswith("cuda") else "cuda:0"

    if kind == "engine":
        if backend not in ("auto", "tensorrt"):
            raise InputError(f"{path} is a TensorRT engine; it runs only with --backend tensorrt")
        from rfdeploy.runtime.backends.trt_runner import TrtRunner

        return TrtRunner(path, device=trt_device)
    if backend == "tensorrt" and kind == "onnx" and not _is_rfdeploy_onnx(path):
        raise InputError(f"{path} has no rfdeploy metadata: its engine profile is unknown",
                         hint="build its engine with `rfdeploy build-engine` and pass the .engine file")

    engine_precision = precision or ("fp16" if fp16 else "fp32")
    if backend == "tensorrt":
        return _engine_runner(path, kind, trt_device, onnx_cache, engine_cache, engine_precision, notes)
    if backend == "auto":
        from rfdeploy.core.errors import BuildError
        from rfdeploy.runtime.backends.engine_cache import engines_usable_here

        why_not = engines_usable_here()
        if why_not is None and kind == "onnx" and not _is_rfdeploy_onnx(path):
            why_not = f"{path.name} has no rfdeploy metadata (no engine profile)"
        if why_not is None:
            try:
                return _engine_runner(path, kind, trt_device, onnx_cache, engine_cache, engine_precision, notes)
            except BuildError as e:
                notes.append(f"no TensorRT engine for {path.name} ({str(e).splitlines()[0]}): using onnxruntime")
        else:
            from rfdeploy.engines.backend import installed_backends

            if installed_backends():  # only worth saying where TensorRT is installed
                notes.append(f"TensorRT engines not used: {why_not}")

    if kind == "onnx":
        if backend == "torch":
            raise InputError(f"{path} is an ONNX file; the torch backend needs a checkpoint")
        from rfdeploy.runtime.backends.ort_runner import OrtRunner

        return OrtRunner(path, device=device)

    # a checkpoint
    if backend == "torch":
        require_torch(f"the torch backend ({path.name})")
        from rfdeploy.runtime.backends.torch_runner import TorchRunner

        return TorchRunner(path, device=device, fp16=fp16, cuda_graph=cuda_graph, notes=notes)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnxruntime":
            raise BackendUnavailableError("onnxruntime is not installed", hint="pip install onnxruntime")
        notes.append("onnxruntime not installed: using the torch backend")
        require_torch(f"running the checkpoint {path.name}")
        from rfdeploy.runtime.backends.torch_runner import TorchRunner

        return TorchRunner(path, device=device, fp16=fp16)
    from rfdeploy.runtime.backends.ort_runner import OrtRunner

    onnx_path = cached_export(path, onnx_cache, notes)
    return OrtRunner(onnx_path, device=device)


def _is_rfdeploy_onnx(path: Path) -> bool:
    """Whether an ONNX file carries rfdeploy's kind metadata (what picks an engine profile)."""
    from rfdeploy.core.metadata import KIND, onnx_metadata

    return KIND in onnx_metadata(path)


def _engine_runner(path: Path, kind: str, device: str, onnx_cache, engine_cache, precision: str,
                   notes: list[str]) -> Runner:
    """Export (checkpoint) -> cached engine for the local GPU -> TrtRunner."""
    from rfdeploy.engines.backend import current_gpu
    from rfdeploy.engines.runner import parse_device
    from rfdeploy.runtime.backends.engine_cache import ensure_engine
    from rfdeploy.runtime.backends.trt_runner import TrtRunner

    onnx_path = cached_export(path, onnx_cache, notes) if kind == "checkpoint" else path
    gpu = current_gpu(parse_device(device))
    engine = ensure_engine(onnx_path, engine_cache, precision=precision,
                           gpu_cc=gpu["compute_capability"] if gpu else None, notes=notes)
    return TrtRunner(engine, device=device)


def default_cache_dir() -> Path:
    env = os.environ.get("RFDEPLOY_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "rfdeploy" if xdg else Path.home() / ".cache" / "rfdeploy"


def cached_export_path(checkpoint: Path, cache_dir=None, sha256: str | None = None) -> Path:
    """Where :func:`cached_export` keeps a checkpoint's ONNX file."""
    from rfdeploy import __version__
    from rfdeploy.core.fsutil import sha256_file

    sha = sha256 or sha256_file(checkpoint)
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "onnx"
    return cache / f"{Path(checkpoint).stem}-{sha[:16]}-v{__version__}.onnx"


def cached_export(checkpoint: Path, cache_dir=None, notes: list[str] | None = None) -> Path:
    """Export a checkpoint to ONNX once; the cache key is the checkpoint's sha256 and our version,
    so a changed file is never served from a stale cache."""
    from rfdeploy.core.fsutil import sha256_file

    sha = sha256_file(checkpoint)
    out = cached_export_path(checkpoint, cache_dir, sha)
    cache = out.parent
    if out.is_file():
        return out
    require_torch(f"exporting the checkpoint {checkpoint.name} to ONNX")
    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.models import load

    if notes is not None:
        notes.append(f"exported {checkpoint.name} to ONNX once: {out}")
    try:
        export_model(load(checkpoint), out, source_sha256=sha)
    except OSError as e:
        raise ModelFileError(f"cannot write the ONNX cache at {cache}: {e}", hint="set RFDEPLOY_CACHE to a writable folder")
    return out
