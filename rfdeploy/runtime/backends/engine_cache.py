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

from rfdeploy.core import metadata, onnxinfo
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import BackendUnavailableError, InputError, ModelFileError
from rfdeploy.core.fsutil import sha256_file
from rfdeploy.engines.profiles import ProfileSpec, ShapeRange

ENV_ENGINE_CACHE = "RFDEPLOY_ENGINE_CACHE"
PRECISIONS = ("fp32", "fp16")
KINDS = ("detector", "ranker")

# Detector profile. Tiles of DETECTOR_OPT_SIDE (tiling's --tile auto size) run in batches up to
# DETECTOR_MAX_BATCH (PipelineOptions.tile_batch); whole images up to DETECTOR_MAX_SIDE
# (PipelineOptions.max_untiled) run untiled. The pipeline reads max batch / max side / min side
# back from the engine's profile (TrtRunner.max_batch/max_input/min_input), so it never feeds a
# shape outside it.
DETECTOR_MIN_SIDE = 64  # tiling.MIN_TILE; the pipeline pads smaller inputs up to this
DETECTOR_OPT_SIDE = 1024
DETECTOR_MAX_SIDE = 2048
DETECTOR_OPT_BATCH = 4
DETECTOR_MAX_BATCH = 8

Echo = Callable[[str], None]


def default_engine_cache_dir() -> Path:
    """``$RFDEPLOY_ENGINE_CACHE``, else ``<default_cache_dir()>/engines``."""
    env = os.environ.get(ENV_ENGINE_CACHE)
    if env:
        return Path(env)
    from rfdeploy.runtime.backends.base import default_cache_dir

    return default_cache_dir() / "engines"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _round_up(v: int, multiple: int) -> int:
    return -(-int(v) // multiple) * multiple


# --- profiles ----------------------------------------------------------------------------------


def detector_profile(contract: PreprocessContract) -> ProfileSpec:
    """Image range for a detector: 1..8 images, sides 64..2048 (rounded up to the contract's pad
    multiple, so any image whose long side fits the limit still fits after padding)."""
    p = contract.pad_multiple
    if contract.resize == "long_side":
        # A detector that resizes its input sees every image whole, one at a time.
        side = _round_up(contract.resize_to, p)
        return ProfileSpec(image=ShapeRange((1, 3, DETECTOR_MIN_SIDE, DETECTOR_MIN_SIDE), (1, 3, side, side),
                                            (1, 3, side, side)))
    opt, big = _round_up(DETECTOR_OPT_SIDE, p), _round_up(DETECTOR_MAX_SIDE, p)
    return ProfileSpec(image=ShapeRange(
        (1, 3, DETECTOR_MIN_SIDE, DETECTOR_MIN_SIDE),
        (DETECTOR_OPT_BATCH, 3, opt, opt),
        (DETECTOR_MAX_BATCH, 3, big, big),
    ))


def ranker_profile(contract: PreprocessContract, num_boxes: int) -> ProfileSpec:
    """Ranker: one image, resized so its long side is ``resize_to`` and padded (the short side can
    be as small as one pad step), plus the fixed ``boxes`` [1, N, 5]."""
    if contract.resize != "long_side":
        raise ModelFileError(
            f"the ranker's contract does not resize its input (resize={contract.resize!r}); "
            "its input size is unbounded and no engine profile can cover it"
        )
    p = contract.pad_multiple
    side = _round_up(contract.resize_to, p)
    opt_h = _round_up(side * 3 // 4, p)  # a 4:3 landscape photo, the common case
    image = ShapeRange((1, 3, p, p), (1, 3, opt_h, side), (1, 3, side, side))
    return ProfileSpec(image=image, named={"boxes": ShapeRange.fixed((1, int(num_boxes), 5))})


def _spec_key(spec: ProfileSpec) -> dict:
    d = {n: r.to_dict() for n, r in sorted(spec.named.items())}
    if spec.image is not None:
        d["<image>"] = spec.image.to_dict()
    return d


# --- ONNX facts --------------------------------------------------------------------------------


def _onnx_facts(onnx_path: Path) -> tuple[dict[str, str], dict[str, tuple[int | None, ...]]]:
    """(metadata, declared input shapes with None for dynamic dims) without reading weights."""
    model = onnxinfo.load_onnx(onnx_path, weights=False)
    return metadata.onnx_metadata(model), onnxinfo.declared_inputs(model)


def profile_for(onnx_path: str | os.PathLike, kind: str | None = None) -> tuple[str, ProfileSpec]:
    """(kind, profile spec) for an rfdeploy ONNX file, from its ``rfdeploy.kind`` and contract
    metadata; ``kind`` given explicitly must agree with the file."""
    path = Path(onnx_path)
    return _profile(path, *_onnx_facts(path), kind)


def _profile(path: Path, meta: dict[str, str], inputs: dict[str, list[int | None]],
             kind: str | None) -> tuple[str, ProfileSpec]:
    file_kind = meta.get(metadata.KIND)
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind is not None and file_kind is not None and kind != file_kind:
        raise ModelFileError(f"{path} is a {file_kind} model, not a {kind}")
    kind = kind or file_kind
    if kind not in KINDS:
        raise ModelFileError(
            f"{path} has no rfdeploy.kind metadata ({file_kind!r}): cannot tell detector from ranker",
            hint="export it with `rfdeploy export`, or build an engine by hand with `rfdeploy build-engine`",
        )
    contract = metadata.read_contract(meta, path)
    if kind == "detector":
        return kind, detector_profile(contract)
    if "boxes" not in inputs or len(inputs["boxes"]) != 3:
        raise ModelFileError(f"{path}: a ranker needs a boxes [B,N,5] input; inputs are {inputs}")
    n = inputs["boxes"][1]
    if n is None:  # a dynamic N: the config says which N the model was made for
        try:
            n = int(metadata.read_config(meta, path)["num_boxes"])
        except (ModelFileError, KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: the ranker's N is dynamic and its config gives no num_boxes") from e
    return kind, ranker_profile(contract, n)


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
    from rfdeploy import __version__
    from rfdeploy.export.fp16 import convert_fp16

    out = cache / f"{onnx_path.stem}-{onnx_sha[:16]}-v{__version__}.fp16.onnx"
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
    from rfdeploy.engines.manifest import check_manifest, load_manifest

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
) -> Path:
    """The cached TensorRT engine for ``onnx_path``, built first when missing or unfit.

    ``cache_dir``: default :func:`default_engine_cache_dir`. ``precision``: fp32 builds the file
    as it is; fp16 first makes (and caches) the FP16 ONNX with rfdeploy.export.fp16. ``kind``:
    detector|ranker (None: the file's ``rfdeploy.kind``) picks the optimization profile.
    ``prefer_backend``: tensorrt | tensorrt_rtx | None (either, data-centre first). ``gpu_cc``: the
    GPU generation to build for (default: the visible GPU's; TensorRT-RTX builds for all its
    default targets when there is none). ``notes`` receives "built"/"reused"/"rebuilt ... because"
    lines; ``echo`` (default: stderr) the progress messages of a build.

    Raises InputError (bad arguments, unwritable cache), ModelFileError (not an rfdeploy model),
    BackendUnavailableError (no TensorRT), BuildError (nothing is left at the engine path).
    """
    from rfdeploy.engines.backend import BuilderBackend, current_gpu
    from rfdeploy.engines.build import _default_command, build_engine
    from rfdeploy.engines.manifest import manifest_path, normalize_cc

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
        gpu = current_gpu()
        gpu_cc = gpu["compute_capability"] if gpu else None

    meta, inputs = _onnx_facts(src)
    kind, spec = _profile(src, meta, inputs, kind)
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
                         rebuild_command=command)
            # Plan first: a reader between the renames sees a sha mismatch, never a wrong pairing.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(manifest_path(engine))
            os.replace(tmp, engine)
            os.replace(manifest_path(tmp), manifest_path(engine))
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


def engines_usable_here(prefer_backend: str | None = None) -> str | None:
    """None when engines can be built and run here (a TensorRT module imports, a CUDA GPU is
    visible and the TensorRT flavour can target it); otherwise the reason, for ``--backend auto``."""
    from rfdeploy.engines.backend import BuilderBackend, current_gpu
    from rfdeploy.engines.manifest import normalize_cc
    from rfdeploy.runtime.backends.base import cuda_available

    # The GPU first: it is the cheaper question, and importing TensorRT is pointless without one.
    if not cuda_available():
        return "no CUDA GPU is visible"
    try:
        backend = BuilderBackend.load(prefer_backend)
    except BackendUnavailableError:
        return "no TensorRT module imports"
    gpu = current_gpu()
    if gpu is None:
        return "no CUDA GPU is visible"
    if backend.supports_compute_capability_targets:
        targets = {normalize_cc(n) for n in backend.module.ComputeCapability.__members__ if n.startswith("SM")}
        if gpu["compute_capability"] not in targets:
            return (f"{backend.name} {backend.version} cannot build for this GPU "
                    f"({gpu['name']}, compute capability {gpu['compute_capability']})")
    return None
