"""`rfdeploy info FILE`: what an ONNX model, engine or checkpoint contains."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rfdeploy.core import onnxinfo
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.metadata import manifest_path, onnx_metadata, safetensors_header, safetensors_metadata
from rfdeploy.engines.backend import BuilderBackend, current_gpu
from rfdeploy.engines.manifest import load_manifest
from rfdeploy.engines.profiles import format_shape

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def describe(path: str | Path) -> dict[str, Any]:
    """A JSON-friendly description of ``path`` (.onnx, .engine/.plan/.trt, .safetensors, .pt/.pth)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return describe_onnx(p)
    if suffix in ENGINE_SUFFIXES:
        return describe_engine(p)
    if suffix == ".safetensors":
        return describe_safetensors(p)
    if suffix in TORCH_SUFFIXES:
        return describe_torch(p)
    raise InputError(
        f"cannot describe {p.name}: unknown file type {suffix!r}",
        hint="rfdeploy info reads .onnx, .engine/.plan/.trt (with its .json manifest), .safetensors and .pt/.pth",
    )


def info(path: str | Path) -> str:
    """What `rfdeploy info FILE` prints."""
    return format_description(describe(path))


def describe_onnx(p: Path) -> dict[str, Any]:
    model = onnxinfo.load_onnx(p, weights=False)
    return {
        "kind": "onnx",
        "path": str(p),
        "bytes": p.stat().st_size,
        "opset": onnxinfo.opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        **onnxinfo.graph_io(model),
        "parameters": onnxinfo.parameter_count(model),
        "nodes": len(model.graph.node),
        "precision": onnxinfo.detect_precision(model),
        "metadata": onnx_metadata(model),
    }


def describe_engine(p: Path) -> dict[str, Any]:
    m = load_manifest(p)
    d: dict[str, Any] = {"kind": "engine", "path": str(p), "bytes": p.stat().st_size,
                         "manifest": str(manifest_path(p)), **m.to_dict()}
    d["inspector"] = _engine_inspector(p, m.backend)
    return d


def _engine_inspector(p: Path, backend_name: str) -> Any:
    """TensorRT's own per-layer view; it needs the engine deserialized, hence a matching GPU."""

    if current_gpu() is None:
        return "unavailable: no CUDA GPU here (the engine inspector deserializes the plan)"
    try:
        backend = BuilderBackend.load(backend_name)
        trt = backend.module
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(p.read_bytes())
        if engine is None:
            return f"unavailable: {backend.name} {backend.version} could not deserialize the plan on this GPU"
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        return json.loads(info)
    except Exception as e:  # noqa: BLE001 - the description is still useful without it
        return f"unavailable: {type(e).__name__}: {e}"


def _sidecar_config(p: Path) -> tuple[str, Any] | None:
    for cand in (p.with_suffix(".json"), p.with_name(p.name + ".json"), p.with_name("config.json")):
        if cand.is_file():
            try:
                return str(cand), json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                return str(cand), f"unreadable: {e}"
    return None


def describe_safetensors(p: Path) -> dict[str, Any]:
    header = safetensors_header(p)
    shapes = {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    meta = safetensors_metadata(p)
    d: dict[str, Any] = {
        "kind": "safetensors",
        "path": str(p),
        "bytes": p.stat().st_size,
        "tensors": len(shapes),
        "parameters": sum(math.prod(s) for s in shapes.values()),
        "metadata": meta,
    }
    side = _sidecar_config(p)
    if side:
        d["config_file"], d["config"] = side
    return d


def describe_torch(p: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle and zip errors of many kinds
        raise ModelFileError(
            f"{p} is not a plain torch state_dict ({type(e).__name__}: {e})",
            hint="only weights-only checkpoints are read (no arbitrary pickled objects)",
        ) from e
    extra = {}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                extra = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str, bool))}
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ModelFileError(f"{p} holds a {type(obj).__name__}, not a state_dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    d: dict[str, Any] = {
        "kind": "torch",
        "path": str(p),
        "bytes": p.stat().st_size,
        "tensors": len(tensors),
        "parameters": sum(v.numel() for v in tensors.values()),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()}),
        "metadata": extra,
    }
    side = _sidecar_config(p)
    if side:
        d["config_file"], d["config"] = side
    return d


def _io_lines(items: list[dict]) -> list[str]:
    out = []
    for t in items:
        dims = t["shape"]
        if not dims:
            shape = "(scalar)"
        elif all(isinstance(v, int) for v in dims):
            shape = "x".join(str(v) if v >= 0 else "?" for v in dims)
        else:  # symbolic ONNX dims
            shape = "[" + ", ".join(str(v) for v in dims) + "]"
        out.append(f"    {t['name']:<16} {shape:<20} {t['dtype']}")
    return out


def _value_lines(key: str, v: Any, indent: str) -> list[str]:
    """``key: value`` in full; a JSON object (inline or as a JSON string, as the rfdeploy.config
    and rfdeploy.contract metadata are) one field per line below its key."""
    if isinstance(v, str):
        try:
            parsed = json.loads(v)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            v = parsed
    if isinstance(v, dict) and v:
        return [f"{indent}{key}:"] + [f"{indent}  {k}: {json.dumps(x, ensure_ascii=False)}" for k, x in v.items()]
    return [f"{indent}{key}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"]


def format_description(d: dict[str, Any]) -> str:
    """Human-readable text for `rfdeploy info`."""
    lines = [f"{d['path']}  ({d['kind']}, {d['bytes']:,} bytes)"]
    kind = d["kind"]
    if kind == "onnx":
        lines += [f"  opset {d['opset']}, {d['nodes']} nodes, {d['parameters']:,} parameters, precision {d['precision']}"]
        if d.get("producer"):
            lines.append(f"  producer: {d['producer']}")
    elif kind == "engine":
        ccs = d["compute_capabilities"]
        lines += [
            f"  {d['backend']} {d['backend_version']}, precision {d['precision']}",
            f"  targets: {', '.join(ccs) if isinstance(ccs, list) else ccs}; built on: "
            + (d["build_gpu"] if isinstance(d["build_gpu"], str) else f"{d['build_gpu']['name']} ({d['build_gpu']['compute_capability']})"),
            f"  plan sha256 {d['plan_sha256']}",
            f"  from {d['onnx_file']} (sha256 {d['onnx_sha256'][:16]}...), rfdeploy {d['rfdeploy_version']}",
            "  profiles:",
        ]
        for i, prof in enumerate(d["profiles"]):
            lines.append(f"    #{i}" + (f" ({prof['preset']})" if prof.get("preset") else ""))
            for n, r in prof["shapes"].items():
                lines.append(f"      {n}: min {format_shape(r['min'])}  opt {format_shape(r['opt'])}  max {format_shape(r['max'])}")
        lines.append(f"  rebuild: {d['rebuild_command_str']}")
        if isinstance(d.get("inspector"), str):
            lines.append(f"  layer inspector: {d['inspector']}")
        elif d.get("inspector") is not None:
            layers = d["inspector"].get("Layers", []) if isinstance(d["inspector"], dict) else []
            lines.append(f"  layer inspector: {len(layers)} layers")
    else:
        lines.append(f"  {d['tensors']} tensors, {d['parameters']:,} parameters")
        if d.get("dtypes"):
            lines.append(f"  dtypes: {', '.join(d['dtypes'])}")
        if d.get("config_file"):
            lines += _value_lines(f"config ({d['config_file']})", d["config"], "  ")
    if "inputs" in d:
        lines.append("  inputs:")
        lines += _io_lines(d["inputs"])
        lines.append("  outputs:")
        lines += _io_lines(d["outputs"])
    if d.get("metadata"):
        lines.append("  metadata:")
        for k, v in sorted(d["metadata"].items()):
            lines += _value_lines(k, v, "    ")
    return "\n".join(lines)
