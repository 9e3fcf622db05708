"""Model-file metadata: every key rfdeploy writes into a model file, and the one reader and writer
for each place the keys live.

* a checkpoint's safetensors header (``__metadata__``): :func:`safetensors_header`,
  :func:`safetensors_metadata` read it (plain JSON, no torch), :func:`canonical_safetensors`
  writes it in a fixed order;
* an ONNX file's ``metadata_props``: :func:`onnx_metadata` reads it (from a loaded model, an
  onnxruntime session or a path), :func:`set_onnx_metadata` writes it;
* an engine's manifest (``X.engine.json``, :func:`manifest_path`): a copy of its ONNX file's
  metadata, read and written with the manifest (:mod:`rfdeploy.engines.manifest`).

The preprocessing contract and the model config stored there are read back by
:func:`read_contract` and :func:`read_config`, so every backend parses them the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.onnxinfo import load_onnx

# -- the keys -------------------------------------------------------------------------------------

KIND = "rfdeploy.kind"  # detector | ranker
CONTRACT = "rfdeploy.contract"  # the PreprocessContract as JSON
CONFIG = "rfdeploy.config"  # the model config (DetectorConfig / RankerConfig) as JSON
VERSION = "rfdeploy.version"  # the rfdeploy version that wrote the file
FORMAT = "rfdeploy.format"  # checkpoints: the format version
SOURCE_SHA256 = "rfdeploy.source_sha256"  # ONNX exports: the checkpoint they came from
PRECISION = "rfdeploy.precision"  # fp32 | fp16 | int8
IO = "rfdeploy.io"  # ONNX exports: input and output names
FP16_METHOD = "rfdeploy.fp16.method"  # fp16 variants: how they were converted
CALIBRATION_METHOD = "rfdeploy.calibration.method"  # int8 variants: max | entropy | percentile
CALIBRATION_KEY = "rfdeploy.calibration.key"  # int8 variants: the calibration cache key
INT8_TARGET = "rfdeploy.int8.target"  # int8 variants: tensorrt | cpu
INT8_FLOAT_NODES = "rfdeploy.int8.float_nodes"  # int8 variants: nodes left in float (JSON list)

KINDS = ("detector", "ranker")
CHECKPOINT_FORMAT = "1"


def manifest_path(engine_path: str | os.PathLike) -> Path:
    """The manifest beside an engine plan: ``X.engine`` -> ``X.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


# -- ONNX metadata_props ---------------------------------------------------------------------------


def onnx_metadata(source: Any) -> dict[str, str]:
    """``metadata_props`` of an ONNX model: an ``onnx.ModelProto``, an onnxruntime
    ``InferenceSession`` (which has parsed the file already, so no onnx import is needed) or a
    path (the graph is read without its external weights)."""
    if hasattr(source, "get_modelmeta"):
        return dict(source.get_modelmeta().custom_metadata_map)
    if not hasattr(source, "metadata_props"):
        source = load_onnx(source, weights=False)
    return {p.key: p.value for p in source.metadata_props}


def set_onnx_metadata(model, props: Mapping[str, str], *, replace: bool = False) -> None:
    """Write ``props`` into ``model.metadata_props``: existing keys get the new value, new keys are
    added in ``props``' order; ``replace`` drops every key not in ``props`` first."""
    if replace:
        del model.metadata_props[:]
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            model.metadata_props.add(key=k, value=str(v))


# -- safetensors headers ---------------------------------------------------------------------------

_MAX_HEADER = 1 << 28


def is_safetensors(path: str | os.PathLike) -> bool:
    """An 8-byte little-endian header length followed by a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < _MAX_HEADER


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file: ``{tensor: {dtype, shape, data_offsets}, ...}`` and
    ``__metadata__``. Read as plain JSON: no torch, no tensor data."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < _MAX_HEADER:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        size = p.stat().st_size
        for name, t in header.items():
            if name != "__metadata__" and (not isinstance(t, dict) or t.get("data_offsets", [0, 0])[1] + 8 + n > size):
                raise ValueError(f"tensor {name!r} lies beyond the end of the file")
    except (OSError, ValueError, UnicodeDecodeError, TypeError, IndexError) as e:
        raise ModelFileError(f"{p} is not a readable safetensors file: {e}") from e
    return header


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors header (empty when it has none)."""
    meta = safetensors_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its safetensors __metadata__ is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys (and metadata keys) sorted:
    safetensors writes them in hash-map order, so identical weights would otherwise give files with
    different sha256 (and needless re-exports of cached ONNX files, which are keyed by it). Data
    offsets are relative to the data section, so reordering the header leaves the tensors as they
    are."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    ordered = {k: header[k] for k in sorted(header)}
    if "__metadata__" in ordered:
        ordered["__metadata__"] = dict(sorted(ordered["__metadata__"].items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


# -- what the keys hold -----------------------------------------------------------------------------


def read_kind(meta: Mapping[str, str]) -> str | None:
    """``detector`` or ``ranker``; None for a file without rfdeploy's kind (a third-party model)."""
    kind = meta.get(KIND)
    return kind if kind in KINDS else None


def read_contract(meta: Mapping[str, str], source: object) -> PreprocessContract:
    """The preprocessing contract a model file carries; ModelFileError naming ``source`` when it is
    missing or invalid."""
    raw = meta.get(CONTRACT)
    if not raw:
        raise ModelFileError(f"{source} carries no preprocessing contract ({CONTRACT} metadata)",
                             hint="export the model with `rfdeploy export`, which records its preprocessing")
    try:
        return PreprocessContract.from_json(raw)
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise ModelFileError(f"{source} has an invalid preprocessing contract ({CONTRACT}): {e}") from e


def read_config(meta: Mapping[str, str], source: object) -> dict:
    """The model config a file carries, as the dict :func:`rfdeploy.models.config.config_from_dict`
    takes; ModelFileError naming ``source`` when it is missing or not a JSON object."""
    d = stored_config(meta, source)
    if d is None:
        raise ModelFileError(f"{source} carries no model config ({CONFIG} metadata)")
    return d


def stored_config(meta: Mapping[str, str], source: object, sidecar: Path | None = None) -> dict | None:
    """As :func:`read_config`, but None when ``meta`` has no config and ``sidecar`` (a JSON file
    holding one, beside a checkpoint) is not given or absent."""
    raw = meta.get(CONFIG)
    if not raw and sidecar is not None and sidecar.is_file():
        raw, source = sidecar.read_text(), sidecar
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except ValueError as e:
        raise ModelFileError(f"{source} has an invalid model config ({CONFIG}): {e}") from e
    if not isinstance(d, dict):
        raise ModelFileError(f"{source} has an invalid model config ({CONFIG}): not a JSON object")
    return d
