"""Build a TensorRT engine plan (and its manifest) from an ONNX file.

TensorRT 11 and TensorRT-RTX are strongly typed, and TensorRT 10 is asked to be: precision is
whatever the ONNX file computes in (fp32, fp16/mixed, or int8 through explicit Q/DQ nodes), so no
precision builder flags are set. Convert the ONNX file first (rfdeploy.export / rfdeploy.calib).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from rfdeploy import __version__
from rfdeploy.core import onnxinfo
from rfdeploy.core.errors import BuildError, InputError
from rfdeploy.core.fsutil import atomic_write_bytes, sha256_file
from rfdeploy.core.metadata import onnx_metadata
from rfdeploy.engines.backend import BuilderBackend, collecting_logger, current_gpu
from rfdeploy.engines.default_profile import profile_specs
from rfdeploy.engines.manifest import IOTensor, Manifest, manifest_path, normalize_cc, sha256_bytes
from rfdeploy.engines.profiles import Profile, ProfileSpec, format_shape, resolve_profiles

log = logging.getLogger(__name__)

OPT_LEVELS = range(0, 6)
# TensorRT-RTX targets these by default; Turing (7.5) is opt-in because it costs performance
# on the others.
_RTX_DEFAULT_EXCLUDED = {"7.5"}

_DTYPE_NAMES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
    "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8", "INT4": "int4", "FP4": "float4",
}


def dtype_name(dt: Any) -> str:
    raw = getattr(dt, "name", str(dt).rsplit(".", 1)[-1])
    return _DTYPE_NAMES.get(raw, raw.lower())


def _parser_errors(parser) -> list[str]:
    def ask(err, attr, default):
        # node_name/node_operator appeared in later parser releases.
        fn = getattr(err, attr, None)
        return fn() if callable(fn) else default

    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = []
        node = ask(e, "node", -1)
        if node >= 0:
            where.append(f"node #{node}")
        if ask(e, "node_name", ""):
            where.append(repr(e.node_name()))
        if ask(e, "node_operator", ""):
            where.append(f"op {e.node_operator()}")
        code = getattr(e.code(), "name", str(e.code()))
        out.append(f"[{code}] " + (" ".join(where) + ": " if where else "") + e.desc())
    return out


def _rtx_targets(trt, requested: Sequence[str] | None) -> list[tuple[str, Any]]:
    """(cc string, ComputeCapability member) pairs to build for."""
    members = {}
    for name, m in trt.ComputeCapability.__members__.items():
        if name.startswith("SM"):
            members[normalize_cc(name)] = m
    if requested is None:
        return [(cc, m) for cc, m in members.items() if cc not in _RTX_DEFAULT_EXCLUDED]
    out = []
    for r in requested:
        try:
            cc = normalize_cc(r)
        except ValueError as e:
            raise InputError(str(e)) from e
        if cc not in members:
            raise InputError(
                f"TensorRT-RTX {trt.__version__} cannot target compute capability {cc}",
                hint=f"supported: {', '.join(members)}",
            )
        if cc not in [c for c, _ in out]:
            out.append((cc, members[cc]))
    return out


def _default_command(
    onnx_path: Path,
    out_path: Path,
    profiles: Sequence[ProfileSpec | Profile],
    *,
    workspace_mb: int | None,
    opt_level: int | None,
    timing_cache: str | Path | None,
    compute_capabilities: Sequence[str] | None,
    backend: str,
) -> list[str]:
    cmd = ["rfdeploy", "build-engine", str(onnx_path), "-o", str(out_path)]
    seen: set[tuple[str, ...]] = set()
    for p in profiles:
        if isinstance(p, ProfileSpec) and p.cli_args:
            args = tuple(p.cli_args)
        else:
            shapes = p.shapes if isinstance(p, Profile) else p.named
            args = ()
            if isinstance(p, ProfileSpec) and p.image is not None:
                shapes = {"": p.image, **shapes}
            for n, r in shapes.items():
                pre = f"{n}:" if n else ""
                args += ("--min-shape", pre + format_shape(r.min), "--opt-shape", pre + format_shape(r.opt),
                         "--max-shape", pre + format_shape(r.max))
        if args not in seen:
            seen.add(args)
            cmd += args
    if workspace_mb is not None:
        cmd += ["--workspace-mb", str(workspace_mb)]
    if opt_level is not None:
        cmd += ["--opt-level", str(opt_level)]
    if timing_cache is not None:
        cmd += ["--timing-cache", str(timing_cache)]
    for cc in compute_capabilities or ():
        cmd += ["--compute-capability", normalize_cc(cc)]
    cmd += ["--backend", backend]
    return cmd


def keep_float32_exact(trt, config) -> bool | None:
    """What the ONNX file computes in float32 runs in float32: TensorRT enables TF32 by default
    (strong typing does not stop it), which on Ampere and later runs float32 convolutions and
    matrix products with a 10-bit mantissa, about 1e-3 relative error against onnxruntime and
    torch. Precision is decided in the ONNX file (fp16/int8 variants), not by the builder.
    Returns the config's TF32 flag as it now reads (None: this TensorRT has no such flag)."""
    if not hasattr(trt.BuilderFlag, "TF32"):
        return None
    config.clear_flag(trt.BuilderFlag.TF32)
    return bool(config.get_flag(trt.BuilderFlag.TF32))


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    profiles: Sequence[ProfileSpec | Profile],
    *,
    workspace_mb: int | None = None,
    opt_level: int | None = None,
    timing_cache: str | Path | None = None,
    compute_capabilities: Sequence[str] | None = None,
    prefer_backend: str | None = None,
    rebuild_command: Sequence[str] | None = None,
    device_index: int = 0,
) -> Manifest:
    """Build ``out_path`` (a TensorRT plan) and ``out_path.json`` (its manifest) from an ONNX file.

    ``profiles``: from :func:`rfdeploy.engines.profiles.specs_from_cli` (or resolved Profiles).
    ``compute_capabilities``: TensorRT-RTX targets (e.g. ["8.6", "8.9"]; default: all it supports
    except Turing); data-centre TensorRT builds for the GPU it runs on only.
    ``rebuild_command``: recorded verbatim when given (the CLI passes the user's command);
    otherwise an equivalent `rfdeploy build-engine` command is derived from the arguments.
    ``device_index``: the CUDA GPU a data-centre TensorRT build runs on and targets.

    Raises InputError (bad arguments/profiles), BuildError (parse or build failure; nothing is
    left at ``out_path``), BackendUnavailableError (no TensorRT).
    """
    t0 = time.perf_counter()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not out_path.parent.is_dir():
        raise InputError(f"output folder does not exist: {out_path.parent}")
    if workspace_mb is not None and int(workspace_mb) <= 0:
        raise InputError(f"--workspace-mb must be positive, got {workspace_mb}")
    if opt_level is not None and int(opt_level) not in OPT_LEVELS:
        raise InputError(f"--opt-level must be 0..5, got {opt_level}")

    model = onnxinfo.load_onnx(onnx_path, weights=False, error_cls=BuildError)
    precision = onnxinfo.detect_precision(model)
    metadata = onnx_metadata(model)
    del model

    backend = BuilderBackend.load(prefer_backend)
    # data-centre TensorRT builds on the thread's current CUDA device: make it the one asked for
    # (TensorRT-RTX compiles ahead of time for named targets and needs no GPU)
    on_gpu = contextlib.nullcontext() if backend.supports_compute_capability_targets else _on_device(device_index)
    with on_gpu:
        trt = backend.module
        logger = collecting_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(backend.network_flags())
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = _parser_errors(parser) or logger.errors or ["(the parser gave no details)"]
            raise BuildError(
                f"{backend.name} {backend.version} could not parse {onnx_path}:\n  " + "\n  ".join(errs),
                hint="the listed nodes use an op, attribute or type this TensorRT does not support; "
                "re-export with a supported opset, simplify the graph (onnxslim), or keep that part outside the engine",
            )

        declared = {}
        for i in range(network.num_inputs):
            t = network.get_input(i)
            declared[t.name] = tuple(int(d) for d in t.shape)
        resolved = resolve_profiles(profiles, declared)

        config = builder.create_builder_config()
        for prof in resolved:
            op = builder.create_optimization_profile()
            for name, r in prof.shapes.items():
                op.set_shape(name, r.min, r.opt, r.max)
            config.add_optimization_profile(op)
        tf32 = keep_float32_exact(trt, config)
        if workspace_mb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        if opt_level is not None:
            config.builder_optimization_level = int(opt_level)

        gpu = current_gpu(device_index)
        if backend.supports_compute_capability_targets:
            targets = _rtx_targets(trt, compute_capabilities)
            config.num_compute_capabilities = len(targets)
            for i, (_, member) in enumerate(targets):
                if not config.set_compute_capability(member, i):
                    raise BuildError(f"{backend.name} refused compute capability target {targets[i][0]}")
            ccs = tuple(cc for cc, _ in targets)
        else:
            here = gpu["compute_capability"] if gpu else None
            for r in compute_capabilities or ():
                if here is None or normalize_cc(r) != here:
                    raise InputError(
                        f"TensorRT builds for the GPU it runs on ({here or 'no GPU found'}); "
                        f"it cannot target compute capability {normalize_cc(r)}",
                        hint="build on a GPU of that generation, or use TensorRT-RTX (--backend tensorrt_rtx)",
                    )
            ccs = (here,) if here else ()

        cache = None
        timing_cache_note = None
        if timing_cache is not None:
            if backend.timing_cache_effective:
                tc_path = Path(timing_cache)
                blob = tc_path.read_bytes() if tc_path.is_file() else b""
                cache = config.create_timing_cache(blob)
                config.set_timing_cache(cache, False)
            else:
                timing_cache_note = f"ignored: {backend.name} has no effective timing cache"
                log.warning("timing cache %s %s", timing_cache, timing_cache_note)

        plan = builder.build_serialized_network(network, config)
        if plan is None or plan.nbytes == 0:
            details = "\n  ".join(logger.errors[-10:]) or "(TensorRT gave no details)"
            raise BuildError(
                f"{backend.name} {backend.version} failed to build an engine from {onnx_path}:\n  {details}",
                hint="see the TensorRT errors above; unsupported layers must stay outside the engine "
                "(e.g. NMS), and TopK K must be <= 3840",
            )
        if cache is not None:
            atomic_write_bytes(Path(timing_cache), config.get_timing_cache().serialize())

        def io(t) -> IOTensor:
            return IOTensor(t.name, tuple(int(d) for d in t.shape), dtype_name(t.dtype))

        command = list(rebuild_command) if rebuild_command else _default_command(
            onnx_path, out_path, profiles, workspace_mb=workspace_mb, opt_level=opt_level,
            timing_cache=timing_cache, compute_capabilities=compute_capabilities, backend=backend.name,
        )
        manifest = Manifest(
            backend=backend.name,
            backend_version=backend.version,
            compute_capabilities=ccs,
            build_gpu=dict(gpu) if gpu else "unknown",
            precision=precision,
            profiles=tuple(resolved),
            inputs=tuple(io(network.get_input(i)) for i in range(network.num_inputs)),
            outputs=tuple(io(network.get_output(i)) for i in range(network.num_outputs)),
            plan_sha256=sha256_bytes(plan),
            onnx_sha256=sha256_file(onnx_path),
            onnx_file=str(onnx_path),
            rfdeploy_version=__version__,
            metadata=metadata,
            rebuild_command=tuple(command),
            build_options={
                "workspace_mb": workspace_mb,
                "opt_level": opt_level,
                "timing_cache": str(timing_cache) if timing_cache is not None else None,
                "timing_cache_note": timing_cache_note,
                "compute_capabilities_requested": list(compute_capabilities) if compute_capabilities else None,
                "plan_bytes": int(plan.nbytes),
                "tf32": tf32,  # read back from the config the plan is built with
            },
            build_seconds=round(time.perf_counter() - t0, 3),
        )
        _write_pair(out_path, plan, manifest)
        return manifest


@contextlib.contextmanager
def _on_device(index: int):
    """CUDA device ``index`` current for the block, the previous one current again after it."""
    try:
        import torch

        use_torch = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - torch missing or broken (CUDA libraries): the CUDA runtime decides
        use_torch = False
    if use_torch:
        with torch.cuda.device(index):
            yield
        return
    try:
        from cuda.bindings import runtime as cudart
    except Exception:  # noqa: BLE001 - no way to choose: TensorRT builds where it finds itself
        cudart = None
    if cudart is None:
        yield
        return
    err, previous = cudart.cudaGetDevice()
    (set_err,) = cudart.cudaSetDevice(index)[:1]
    if int(set_err) != 0:
        raise BuildError(f"cannot make CUDA GPU {index} current for the build (CUDA error {int(set_err)})")
    try:
        yield
    finally:
        if int(err) == 0:
            cudart.cudaSetDevice(previous)


def _write_pair(out_path: Path, plan, manifest: Manifest) -> None:
    """Plan first, then manifest; if the manifest cannot be written the plan is removed again,
    so an engine never exists without the manifest that describes it."""
    mpath = manifest_path(out_path)
    if mpath.exists():
        # A stale manifest must not describe the new plan, even for a moment.
        os.unlink(mpath)
    atomic_write_bytes(out_path, plan)
    try:
        manifest.write(out_path)
    except BaseException:
        try:
            os.unlink(out_path)
        except FileNotFoundError:
            pass
        raise


def build_engine_cli(
    onnx_path: str | Path,
    out_path: str | Path | None = None,
    *,
    specs: Sequence[ProfileSpec] | None = None,
    min_shapes: Sequence[str] = (),
    opt_shapes: Sequence[str] = (),
    max_shapes: Sequence[str] = (),
    presets: Sequence[str] = (),
    workspace_mb: int | None = None,
    opt_level: int | None = None,
    timing_cache: str | Path | None = None,
    compute_capabilities: Sequence[str] = (),
    backend: str | None = None,
    argv: Sequence[str] | None = None,
) -> Manifest:
    """What `rfdeploy build-engine` does after option parsing: ``specs`` from :func:`profile_specs`
    (or shapes/presets as the user typed them); ``out_path`` defaults to the ONNX path with
    ``.engine``; ``argv`` (the user's command) is recorded as the rebuild command."""
    onnx_path = Path(onnx_path)
    out = Path(out_path) if out_path is not None else onnx_path.with_suffix(".engine")
    if specs is None:
        specs = profile_specs(onnx_path, min_shapes=min_shapes, opt_shapes=opt_shapes, max_shapes=max_shapes,
                              presets=presets)
    return build_engine(
        onnx_path, out, specs, workspace_mb=workspace_mb, opt_level=opt_level, timing_cache=timing_cache,
        compute_capabilities=list(compute_capabilities) or None, prefer_backend=backend, rebuild_command=argv,
    )
