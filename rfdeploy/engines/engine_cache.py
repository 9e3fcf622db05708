"""TensorRT engines built on first use into a cache folder, and reused afterwards.

Engines are specific to a TensorRT release and a GPU generation, so a GPU server (e.g. the Docker
image, whose ``RFDEPLOY_ENGINE_CACHE=/cache`` is a volume) builds them from the ONNX files when a
model is first opened. An engine's cache key covers everything that makes a plan different:

    sha256(ONNX bytes) + precision + TensorRT flavour and version + GPU compute capability
    + the optimization-profile spec

and names the file ``<cache>/<stem>-<key16>.engine`` (``<stem>-fp16-<key16>.engine`` for FP16),
with its manifest beside it. A cached engine is reused only while ``check_manifest`` accepts it for
the running TensorRT and GPU and its bytes still match the manifest's sha256; otherwise it is built
again. Builds happen under a per-engine ``fcntl.flock`` lock, into temporary names that are
renamed into place, so concurrent processes never see or make a half-written engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rfdeploy import __version__
from rfdeploy.core import metadata
from rfdeploy.core.env import cuda_driver_loads, default_cache_dir
from rfdeploy.core.errors import BackendUnavailableError, InputError, ModelFileError
from rfdeploy.core.fsutil import publish_pair, sha256_file
from rfdeploy.core.precision import cached_variant_name
from rfdeploy.engines.backend import BuilderBackend, current_gpu
from rfdeploy.engines.build import _default_command, build_engine
from rfdeploy.engines.default_profile import onnx_facts, profile_from_facts
from rfdeploy.engines.manifest import check_manifest, load_manifest, manifest_path, normalize_cc
from rfdeploy.engines.profiles import ProfileSpec

ENV_ENGINE_CACHE = "RFDEPLOY_ENGINE_CACHE"
PRECISIONS = ("fp32", "fp16")

Echo = Callable[[str], None]


def default_engine_cache_dir() -> Path:
    """``$RFDEPLOY_ENGINE_CACHE``, else ``<default_cache_dir()>/engines``."""
    env = os.environ.get(ENV_ENGINE_CACHE)
    if env:
        return Path(env)
    return default_cache_dir() / "engines"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _spec_key(spec: ProfileSpec) -> dict:
    d = {n: r.to_dict() for n, r in sorted(spec.named.items())}
    if spec.image is not None:
        d["<image>"] = spec.image.to_dict()
    return d


# --- locking -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block (other processes wait for it)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock; the atomic renames still hold
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _remove_leftovers(target: Path) -> None:
    """Temporary files of builds for ``target`` that died midway (called with the lock held, so
    no live build owns them)."""
    prefix = _tmp_prefix(target)
    for p in target.parent.iterdir():
        # atomic writes inside a build add one more leading dot
        if p.name.startswith(prefix) or p.name.startswith("." + prefix):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _check_cache_dir(cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the engine cache folder {cache}: {e}",
                         hint=f"pass --engine-cache DIR or set {ENV_ENGINE_CACHE} to a writable folder") from e
    if not os.access(cache, os.W_OK | os.X_OK):
        raise InputError(f"the engine cache folder {cache} is not writable",
                         hint=f"pass --engine-cache DIR or set {ENV_ENGINE_CACHE} to a writable folder")


# --- fp16 ONNX ---------------------------------------------------------------------------------


def cached_fp16_onnx(onnx_path: Path, cache: Path, onnx_sha: str, notes: list[str] | None = None,
                     echo: Echo = _stderr) -> Path:
    """The FP16 version of ``onnx_path`` in the cache, keyed by the source's sha256 and the rfdeploy
    version (the conversion rules belong to the version)."""
    from rfdeploy.export.fp16 import convert_fp16  # onnx and its converters: only when converting

    out = cache / cached_variant_name(onnx_path.stem, onnx_sha, __version__, "fp16")
    with _locked(_lock_path(out)):
        if out.is_file():
            return out
        echo(f"rfdeploy: converting {onnx_path.name} to FP16 for the engine -> {out}")
        convert_fp16(onnx_path, out)  # atomic: complete or absent
    if notes is not None:
        notes.append(f"made the FP16 ONNX once: {out}")
    return out


# --- engines -----------------------------------------------------------------------------------


def engine_key(onnx_sha: str, precision: str, backend_name: str, backend_version: str, gpu_cc: str | None,
               spec: ProfileSpec) -> str:
    """Hex sha256 over everything that makes a built plan differ."""
    payload = {
        "onnx_sha256": onnx_sha,
        "precision": precision,
        "backend": backend_name,
        "backend_version": backend_version,
        "gpu_cc": gpu_cc or "any",
        "profile": _spec_key(spec),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _reuse_problem(engine: Path, onnx_sha: str, backend, gpu_cc: str | None) -> str | None:
    """None when the cached engine can be reused here, else why not."""
    try:
        manifest = load_manifest(engine)
        check_manifest(manifest, engine, runtime_backend_name=backend.name, runtime_version=backend.version,
                       gpu_cc=gpu_cc)
    except ModelFileError as e:  # EngineMismatchError included
        return str(e.args[0])
    if manifest.onnx_sha256 != onnx_sha:
        return "its manifest names another ONNX file's sha256"
    return None


def ensure_engine(
    onnx_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    precision: str = "fp32",
    kind: str | None = None,
    prefer_backend: str | None = None,
    gpu_cc: str | None = None,
    notes: list[str] | None = None,
    echo: Echo | None = None,
    device_index: int = 0,
) -> Path:
    """The cached TensorRT engine for ``onnx_path``, built first when missing or unfit.

    ``cache_dir``: default :func:`default_engine_cache_dir`. ``precision``: fp32 builds the file
    as it is; fp16 first makes (and caches) the FP16 ONNX with rfdeploy.export.fp16. ``kind``:
    detector|ranker (None: the file's ``rfdeploy.kind``) picks the optimization profile.
    ``prefer_backend``: tensorrt | tensorrt_rtx | None (either, data-centre first). ``gpu_cc``: the
    GPU generation to build for (default: the visible GPU's; TensorRT-RTX builds for all its
    default targets when there is none). ``notes`` receives "built"/"reused"/"rebuilt ... because"
    lines; ``echo`` (default: stderr) the progress messages of a build. ``device_index``: the
    CUDA GPU the engine is for (a data-centre TensorRT build runs there).

    Raises InputError (bad arguments, unwritable cache), ModelFileError (not an rfdeploy model),
    BackendUnavailableError (no TensorRT), BuildError (nothing is left at the engine path).
    """
    echo = echo or _stderr
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"ONNX file not found: {src}")
    cache = Path(cache_dir) if cache_dir is not None else default_engine_cache_dir()
    _check_cache_dir(cache)
    backend = BuilderBackend.load(prefer_backend)
    if gpu_cc is not None:
        try:
            gpu_cc = normalize_cc(gpu_cc)
        except ValueError as e:
            raise InputError(str(e)) from e
    else:
        gpu = current_gpu(device_index)
        gpu_cc = gpu["compute_capability"] if gpu else None

    meta, inputs = onnx_facts(src)
    kind, spec = profile_from_facts(src, meta, inputs, kind)
    build_src = src
    src_sha = sha256_file(src)
    file_precision = meta.get(metadata.PRECISION, "fp32")
    if precision == "fp16" and file_precision == "fp32":
        build_src = cached_fp16_onnx(src, cache, src_sha, notes, echo)
    elif file_precision != precision and notes is not None:
        notes.append(f"{src.name} is already {file_precision}: its engine is built as the file is")
    onnx_sha = src_sha if build_src == src else sha256_file(build_src)

    key = engine_key(onnx_sha, precision, backend.name, backend.version, gpu_cc, spec)
    stem = src.stem if precision == "fp32" else f"{src.stem}-{precision}"
    engine = cache / f"{stem}-{key[:16]}.engine"
    # TensorRT-RTX compiles ahead of time for named GPU generations; data-centre TensorRT builds
    # for the GPU it runs on (build_engine refuses a gpu_cc that is not the local GPU's).
    ccs = [gpu_cc] if gpu_cc is not None else None
    where = f"compute capability {gpu_cc}" if gpu_cc else "its default GPU targets"

    with _locked(_lock_path(engine)):
        _remove_leftovers(engine)
        reason = None
        if engine.is_file() or manifest_path(engine).is_file():
            reason = _reuse_problem(engine, onnx_sha, backend, gpu_cc)
            if reason is None:
                if notes is not None:
                    notes.append(f"reused the cached {kind} engine {engine}")
                return engine
        verb = "rebuilding" if reason else "building"
        echo(f"rfdeploy: {verb} the TensorRT {kind} engine for {src.name} ({precision}, {backend.name} "
             f"{backend.version}, {where}) into {cache}" + (f" because {reason}" if reason else "")
             + "; this is done once per GPU and TensorRT version")
        t0 = time.perf_counter()
        tmp = cache / f"{_tmp_prefix(engine)}{os.getpid()}-{secrets.token_hex(4)}"
        command = _default_command(build_src, engine, [spec], workspace_mb=None, opt_level=None, timing_cache=None,
                                   compute_capabilities=ccs, backend=backend.name)
        try:
            build_engine(build_src, tmp, [spec], compute_capabilities=ccs, prefer_backend=backend.name,
                         rebuild_command=command, device_index=device_index)
            publish_pair(tmp, engine, manifest_path(tmp), manifest_path(engine))
        except BaseException:
            for p in (tmp, manifest_path(tmp)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            # a half-replaced pair must not survive either
            if not manifest_path(engine).is_file():
                with contextlib.suppress(FileNotFoundError):
                    engine.unlink()
            raise
        seconds = time.perf_counter() - t0
        echo(f"rfdeploy: built {engine.name} in {seconds:.1f} s")
        if notes is not None:
            if reason:
                notes.append(f"rebuilt the {kind} engine {engine} because {reason}")
            else:
                notes.append(f"built the {kind} engine {engine} ({seconds:.1f} s)")
        return engine


def engines_usable_here(prefer_backend: str | None = None, device_index: int = 0) -> str | None:
    """None when engines can be built and run here (a TensorRT module imports, CUDA GPU
    ``device_index`` is visible and the TensorRT flavour can target it); otherwise the reason, for
    ``--backend auto``."""
    # The driver first: it is the cheapest question, and importing TensorRT is pointless without
    # it. Not torch's view of CUDA: engines run without torch (through the CUDA runtime).
    if not cuda_driver_loads():
        return "no CUDA GPU is visible"
    try:
        backend = BuilderBackend.load(prefer_backend)
    except BackendUnavailableError:
        return "no TensorRT module imports"
    gpu = current_gpu(device_index)
    if gpu is None:
        return f"no CUDA GPU {device_index} is visible" if device_index else "no CUDA GPU is visible"
    if backend.supports_compute_capability_targets:
        targets = {normalize_cc(n) for n in backend.module.ComputeCapability.__members__ if n.startswith("SM")}
        if gpu["compute_capability"] not in targets:
            return (f"{backend.name} {backend.version} cannot build for this GPU "
                    f"({gpu['name']}, compute capability {gpu['compute_capability']})")
    return None
