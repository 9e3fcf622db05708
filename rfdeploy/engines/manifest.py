"""The engine manifest ``X.engine.json``: what an engine plan is and where it may run.

The plan file stays a pure TensorRT plan (any TensorRT tool can read it); everything rfdeploy
needs to decide whether it fits this machine lives beside it. A runtime refuses an engine whose
TensorRT version, GPU generation, bytes or input shapes do not match, with the command to
rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rfdeploy.core.errors import EngineMismatchError, ModelFileError
from rfdeploy.core.fsutil import atomic_write_bytes, sha256_file
from rfdeploy.core.metadata import manifest_path
from rfdeploy.engines.profiles import Profile, format_shape, select_profile

SCHEMA_VERSION = 1
UNKNOWN = "unknown"


def sha256_bytes(data) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def normalize_cc(cc: str | float | int) -> str:
    """'8.6', 'sm86', 'SM_86', '86', 8.6 -> '8.6'; '12.0', 'sm120', '120' -> '12.0'."""
    s = str(cc).strip().lower().replace("sm_", "").replace("sm", "").replace("compute_", "")
    if "." in s:
        major, _, minor = s.partition(".")
    elif s.isdigit() and len(s) >= 2:
        major, minor = s[:-1], s[-1]
    else:
        raise ValueError(f"not a compute capability: {cc!r} (write it as 8.6 or sm86)")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"not a compute capability: {cc!r} (write it as 8.6 or sm86)")
    return f"{int(major)}.{int(minor)}"




@dataclass(frozen=True)
class IOTensor:
    name: str
    shape: tuple[int, ...]  # -1 for dynamic dims
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> "IOTensor":
        return cls(str(d["name"]), tuple(int(v) for v in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class Manifest:
    backend: str  # "tensorrt" | "tensorrt_rtx"
    backend_version: str
    # GPU generations the plan was built for ("8.6", ...); empty when unknown.
    compute_capabilities: tuple[str, ...]
    # The GPU the plan was built on: {"name", "compute_capability"}, or "unknown".
    build_gpu: Mapping[str, str] | str
    precision: str
    profiles: tuple[Profile, ...]
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]
    plan_sha256: str
    onnx_sha256: str
    onnx_file: str
    rfdeploy_version: str
    metadata: Mapping[str, str]
    rebuild_command: tuple[str, ...]
    build_options: Mapping[str, Any] = field(default_factory=dict)
    build_seconds: float | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.backend not in ("tensorrt", "tensorrt_rtx"):
            raise ValueError(f"unknown backend {self.backend!r}")
        if len(self.plan_sha256) != 64:
            raise ValueError("plan_sha256 must be a sha256 hex digest")
        if not self.profiles:
            raise ValueError("a manifest needs at least one profile")
        object.__setattr__(self, "compute_capabilities", tuple(normalize_cc(c) for c in self.compute_capabilities))

    @property
    def rebuild_command_str(self) -> str:
        return shlex.join(self.rebuild_command)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compute_capabilities"] = list(self.compute_capabilities) or UNKNOWN
        d["build_gpu"] = dict(self.build_gpu) if isinstance(self.build_gpu, Mapping) else self.build_gpu
        d["profiles"] = [p.to_dict() for p in self.profiles]
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["rebuild_command"] = list(self.rebuild_command)
        d["rebuild_command_str"] = self.rebuild_command_str
        d["metadata"] = dict(self.metadata)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Manifest":
        ccs = d["compute_capabilities"]
        return cls(
            backend=str(d["backend"]),
            backend_version=str(d["backend_version"]),
            compute_capabilities=() if ccs == UNKNOWN else tuple(ccs),
            build_gpu=d["build_gpu"] if isinstance(d["build_gpu"], str) else dict(d["build_gpu"]),
            precision=str(d["precision"]),
            profiles=tuple(Profile.from_dict(p) for p in d["profiles"]),
            inputs=tuple(IOTensor.from_dict(t) for t in d["inputs"]),
            outputs=tuple(IOTensor.from_dict(t) for t in d["outputs"]),
            plan_sha256=str(d["plan_sha256"]),
            onnx_sha256=str(d["onnx_sha256"]),
            onnx_file=str(d["onnx_file"]),
            rfdeploy_version=str(d["rfdeploy_version"]),
            metadata={str(k): str(v) for k, v in d["metadata"].items()},
            rebuild_command=tuple(str(a) for a in d["rebuild_command"]),
            build_options=dict(d.get("build_options", {})),
            build_seconds=d.get("build_seconds"),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def write(self, engine_path: str | Path) -> Path:
        p = manifest_path(engine_path)
        atomic_write_bytes(p, (self.to_json() + "\n").encode())
        return p


def load_manifest(engine_path: str | Path) -> Manifest:
    """Read and validate ``ENGINE.json``; a missing or unreadable manifest is a ModelFileError."""
    mp = manifest_path(engine_path)
    if not mp.is_file():
        raise ModelFileError(
            f"engine manifest {mp} is missing",
            hint="rebuild the engine with `rfdeploy build-engine`, which writes the plan and its manifest together",
        )
    try:
        d = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"engine manifest {mp} is not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ModelFileError(f"engine manifest {mp} is not a JSON object")
    if int(d.get("schema_version", -1)) > SCHEMA_VERSION:
        raise ModelFileError(
            f"engine manifest {mp} has schema {d.get('schema_version')}, newer than this rfdeploy understands "
            f"({SCHEMA_VERSION})",
            hint="upgrade rfdeploy",
        )
    try:
        return Manifest.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"engine manifest {mp} is incomplete or malformed ({type(e).__name__}: {e})") from e


def check_manifest(
    manifest: Manifest,
    engine_path: str | Path,
    *,
    runtime_backend_name: str,
    runtime_version: str,
    gpu_cc: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Raise EngineMismatchError (with the rebuild command) unless the engine fits this runtime.

    Checks, in order: backend and exact version (plans are not portable across releases), the
    GPU's compute capability against the targets (skipped when either is unknown), the plan's
    sha256, and ``input_shapes`` against the profiles.
    """
    problems: list[str] = []
    if runtime_backend_name != manifest.backend:
        problems.append(f"the engine was built with {manifest.backend}, this runtime uses {runtime_backend_name}")
    elif str(runtime_version) != manifest.backend_version:
        problems.append(
            f"the engine was built with {manifest.backend} {manifest.backend_version}, "
            f"this runtime has {runtime_version}"
        )
    if gpu_cc is not None and manifest.compute_capabilities:
        cc = normalize_cc(gpu_cc)
        if cc not in manifest.compute_capabilities:
            problems.append(
                f"this GPU has compute capability {cc}, the engine targets "
                f"{', '.join(manifest.compute_capabilities)}"
            )
    p = Path(engine_path)
    if not p.is_file():
        raise ModelFileError(f"engine file not found: {p}")
    actual = sha256_file(p)
    if actual != manifest.plan_sha256:
        problems.append(
            f"the plan's sha256 is {actual[:16]}..., the manifest records {manifest.plan_sha256[:16]}... "
            "(the plan was replaced or damaged after it was built)"
        )
    if input_shapes is not None:
        try:
            select_profile(manifest.profiles, input_shapes)
        except EngineMismatchError as e:
            problems.append(str(e))
    if problems:
        raise EngineMismatchError(
            f"engine {p} does not fit: " + "; ".join(problems),
            hint=f"rebuild it: {manifest.rebuild_command_str}",
        )


def describe_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{n} {format_shape(s)}" for n, s in shapes.items())
