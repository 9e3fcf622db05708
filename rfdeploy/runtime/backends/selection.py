"""Which backend runs a model file: :func:`open_runner` picks the runner (TensorRT engine,
onnxruntime, torch) for a file, exporting checkpoints and building engines on first use."""

from __future__ import annotations

import os
from pathlib import Path

from rfdeploy.core.env import require_torch
from rfdeploy.core.errors import BackendUnavailableError, BuildError, InputError
from rfdeploy.core.metadata import KIND, onnx_metadata
from rfdeploy.core.precision import int8_cpu_note
from rfdeploy.engines.backend import installed_backends
from rfdeploy.engines.engine_cache import engines_usable_here, ensure_engine
from rfdeploy.engines.runner import parse_device
from rfdeploy.export.cache import cached_export
from rfdeploy.runtime.backends.base import Runner, model_kind
from rfdeploy.runtime.backends.ort_runner import OrtRunner
from rfdeploy.runtime.backends.torch_runner import TorchRunner
from rfdeploy.runtime.backends.trt_runner import TrtRunner

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


def open_runner(path: str | os.PathLike, *, backend: str = "auto", device: str = "cpu", fp16: bool = False,
                onnx_cache: str | os.PathLike | None = None, engine_cache: str | os.PathLike | None = None,
                precision: str | None = None, notes: list[str] | None = None, cuda_graph: bool = False,
                spin: bool = True) -> Runner:
    """A runner for a model file.

    tensorrt: an engine file as it is; a checkpoint or ONNX file is exported (once, into
    ``onnx_cache``) and built into a TensorRT engine for this GPU (once, into ``engine_cache``; see
    rfdeploy.engines.engine_cache). auto: the same when a TensorRT module imports and a CUDA
    GPU is visible, else onnxruntime (a checkpoint is exported to ONNX once), else torch.
    ``precision`` (fp32|fp16) is the precision of engines built here; None: fp16 when ``fp16``.
    ``cuda_graph``: the torch backend replays CUDA graphs per input shape (torch backend only).
    ``spin``: onnxruntime's worker threads spin between calls (see OrtRunner).
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
        return TrtRunner(path, device=trt_device)
    if backend == "tensorrt" and kind == "onnx" and not _is_rfdeploy_onnx(path):
        raise InputError(f"{path} has no rfdeploy metadata: its engine profile is unknown",
                         hint="build its engine with `rfdeploy build-engine` and pass the .engine file")

    engine_precision = precision or ("fp16" if fp16 else "fp32")
    if backend == "tensorrt":
        return _engine_runner(path, kind, trt_device, onnx_cache, engine_cache, engine_precision, notes)
    if backend == "auto":
        why_not = engines_usable_here(device_index=parse_device(trt_device))
        if why_not is None and kind == "onnx" and not _is_rfdeploy_onnx(path):
            why_not = f"{path.name} has no rfdeploy metadata (no engine profile)"
        if why_not is None:
            try:
                return _engine_runner(path, kind, trt_device, onnx_cache, engine_cache, engine_precision, notes)
            except BuildError as e:
                notes.append(f"no TensorRT engine for {path.name} ({str(e).splitlines()[0]}): using onnxruntime")
        elif installed_backends():  # only worth saying where TensorRT is installed
            notes.append(f"TensorRT engines not used: {why_not}")

    if kind == "onnx":
        if backend == "torch":
            raise InputError(f"{path} is an ONNX file; the torch backend needs a checkpoint")
        runner = OrtRunner(path, device=device, spin=spin)
        note = int8_cpu_note(runner.metadata, runner.session.get_providers())
        if note:
            notes.append(f"{path.name}: {note}")
        return runner

    # a checkpoint
    if backend == "torch":
        require_torch(f"the torch backend ({path.name})")
        return TorchRunner(path, device=device, fp16=fp16, cuda_graph=cuda_graph, notes=notes)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnxruntime":
            raise BackendUnavailableError("onnxruntime is not installed", hint="pip install onnxruntime")
        notes.append("onnxruntime not installed: using the torch backend")
        require_torch(f"running the checkpoint {path.name}")
        return TorchRunner(path, device=device, fp16=fp16)
    onnx_path = cached_export(path, onnx_cache, notes)
    return OrtRunner(onnx_path, device=device, spin=spin)


def _is_rfdeploy_onnx(path: Path) -> bool:
    """Whether an ONNX file carries rfdeploy's kind metadata (what picks an engine profile)."""
    return KIND in onnx_metadata(path)


def _engine_runner(path: Path, kind: str, device: str, onnx_cache, engine_cache, precision: str,
                   notes: list[str]) -> Runner:
    """Export (checkpoint) -> cached engine for the local GPU -> TrtRunner."""
    onnx_path = cached_export(path, onnx_cache, notes) if kind == "checkpoint" else path
    # ensure_engine builds for that GPU's generation, on that GPU
    engine = ensure_engine(onnx_path, engine_cache, precision=precision, notes=notes, device_index=parse_device(device))
    return TrtRunner(engine, device=device)
