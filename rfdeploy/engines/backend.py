"""Which TensorRT flavour builds (or runs) engines: data-centre `tensorrt` or `tensorrt_rtx`.

Both are imported lazily so the rest of rfdeploy works without either. Their Python APIs have the
same shape; the differences that matter here (strong typing default, compute-capability targets,
timing cache) are answered by small properties of :class:`BuilderBackend`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

from rfdeploy.core.env import cuda_driver_loads
from rfdeploy.core.errors import BackendUnavailableError, InputError

log = logging.getLogger(__name__)

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt_rtx"
BACKEND_NAMES = (TENSORRT, TENSORRT_RTX)
# Data-centre TensorRT first: it is the one that runs on Hopper/Ampere data-centre GPUs.
_DEFAULT_ORDER = (TENSORRT, TENSORRT_RTX)
_ALIASES = {"trt": TENSORRT, "rtx": TENSORRT_RTX, "tensorrt-rtx": TENSORRT_RTX}


def normalize_backend_name(prefer: str | None) -> str | None:
    """None/"auto" -> None; aliases (trt, rtx) -> the module name; anything else -> InputError."""
    if prefer is None or prefer == "auto":
        return None
    name = _ALIASES.get(prefer.lower(), prefer.lower())
    if name not in BACKEND_NAMES:
        raise InputError(
            f"unknown TensorRT backend {prefer!r}",
            hint=f"choose one of: auto, {', '.join(BACKEND_NAMES)}",
        )
    return name


def _try_import(name: str) -> tuple[Any | None, str | None]:
    try:
        return importlib.import_module(name), None
    # A broken install (missing shared libraries, a source stub package) fails with more than
    # ImportError; any failure here means "not usable".
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def load_trt_module(prefer: str | None = None) -> tuple[Any, str]:
    """Import a TensorRT module and return (module, name).

    ``prefer`` None/"auto" tries ``tensorrt`` then ``tensorrt_rtx``; a named backend is the only
    one tried, so a user who asks for one never silently gets the other.
    """
    wanted = normalize_backend_name(prefer)
    order = (wanted,) if wanted else _DEFAULT_ORDER
    reasons = []
    for name in order:
        mod, why = _try_import(name)
        if mod is not None:
            return mod, name
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(
        "no TensorRT backend is importable (" + "; ".join(reasons) + ")",
        hint="pip install 'rfdeploy[rtx]' (TensorRT-RTX, builds on CPU-only machines) "
        "or 'rfdeploy[gpu]' (data-centre TensorRT)",
    )


def installed_backends() -> list[str]:
    """Backends whose module can be found, without importing them (cheap; may still fail to load)."""
    return [n for n in BACKEND_NAMES if importlib.util.find_spec(n) is not None]


@dataclass(frozen=True)
class BuilderBackend:
    """A loaded TensorRT module plus what rfdeploy needs to know about it."""

    name: str
    version: str
    module: Any = field(repr=False, compare=False)

    @classmethod
    def load(cls, prefer: str | None = None) -> "BuilderBackend":
        mod, name = load_trt_module(prefer)
        return cls(name=name, version=str(getattr(mod, "__version__", "unknown")), module=mod)

    @property
    def is_rtx(self) -> bool:
        return self.name == TENSORRT_RTX

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    def network_flags(self) -> int:
        """Creation flags asking for a strongly typed network.

        TensorRT 10 needs STRONGLY_TYPED to take precision from the ONNX file; TensorRT 11 and
        TensorRT-RTX are always strongly typed and accept (or lack) the flag. The enum value
        differs between releases, so it is read from the module, never hard-coded.
        """
        flag_enum = self.module.NetworkDefinitionCreationFlag
        members = getattr(flag_enum, "__members__", {})
        if "STRONGLY_TYPED" in members:
            return 1 << int(members["STRONGLY_TYPED"])
        return 0

    @property
    def supports_compute_capability_targets(self) -> bool:
        """TensorRT-RTX builds ahead of time for a list of GPU generations; TensorRT does not."""
        cfg_cls = self.module.IBuilderConfig
        return hasattr(cfg_cls, "set_compute_capability") and hasattr(self.module, "ComputeCapability")

    @property
    def timing_cache_effective(self) -> bool:
        # TensorRT-RTX documents its timing cache as a no-op that also forces a GPU query,
        # which would break CPU-only builds.
        return not self.is_rtx

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def current_gpu(device_index: int = 0) -> dict[str, str] | None:
    """{"name", "compute_capability"} of a visible CUDA GPU, or None when there is none. Where no
    CUDA driver loads there is none, and neither torch nor the CUDA runtime is imported to learn it.
    torch answers when it sees the GPU, else the CUDA runtime (cuda-python)."""
    if not cuda_driver_loads():
        return None
    try:
        import torch

        if torch.cuda.is_available() and device_index < torch.cuda.device_count():
            major, minor = torch.cuda.get_device_capability(device_index)
            return {"name": torch.cuda.get_device_name(device_index), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - torch missing or broken: try the CUDA runtime directly
        pass
    # torch without CUDA (a CPU wheel, or one built for a newer CUDA than the driver) says nothing
    # about the GPU: TensorRT engines still run through the CUDA runtime, so ask it
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(device_index)
        if int(err) != 0:
            return None
        name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
        return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # noqa: BLE001
        return None


def collecting_logger(trt):
    """A TensorRT logger that keeps errors, so a failed build can say why."""

    class _Collecting(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.debug("TensorRT error: %s", msg)  # raised to the caller inside the rfdeploy error
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Collecting()
