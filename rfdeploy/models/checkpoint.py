"""Checkpoints: one format, a safetensors file whose header metadata carries the JSON config.

Plain torch state_dicts (.pt/.pth) are accepted too, read with ``weights_only=True`` (no pickled
code runs), with the config from a sidecar ``<file>.json`` or given by the caller.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rfdeploy import __version__
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.fsutil import atomic_write_bytes, sha256_file  # noqa: F401  (re-exported)
from rfdeploy.models.config import DetectorConfig, RankerConfig, config_from_dict

CONFIG_KEY = "rfdeploy.config"
FORMAT_KEY = "rfdeploy.format"
FORMAT_VERSION = "1"






def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                    extra_metadata: dict[str, str] | None = None) -> Path:
    """Save weights + config. ``dtype=torch.float16`` halves the file (weights are cast back on load)."""
    from safetensors.torch import save

    cfg = model.cfg
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {CONFIG_KEY: json.dumps(cfg.to_dict(), sort_keys=True), FORMAT_KEY: FORMAT_VERSION,
            "rfdeploy.version": __version__}
    meta.update(extra_metadata or {})
    path = Path(path)
    atomic_write_bytes(path, _canonical_safetensors(save(tensors, metadata=meta)))
    return path


def _canonical_safetensors(blob: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes metadata in hash-map
    order, so identical weights would otherwise give files with different sha256 (and needless
    re-exports of cached ONNX files, which are keyed by it). Data offsets are relative to the data
    section, so reordering header keys leaves the tensors as they are."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    ordered = {k: header[k] for k in sorted(header)}
    if "__metadata__" in ordered:
        ordered["__metadata__"] = dict(sorted(ordered["__metadata__"].items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from e
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip archive or legacy pickle
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelFileError(
                f"{path} could not be loaded safely (weights_only=True): {str(e).splitlines()[0]}",
                hint="only plain tensors are accepted; re-save the state_dict or use safetensors",
            ) from e
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelFileError(f"{path} does not hold a state_dict of tensors")
        return obj
    raise ModelFileError(f"{path} is neither a safetensors file nor a torch checkpoint")


def _looks_like_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length followed by a JSON object
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < (1 << 28)


def read_config(path: str | os.PathLike) -> DetectorConfig | RankerConfig | None:
    """The config stored with a checkpoint (safetensors metadata or sidecar JSON), if any."""
    path = Path(path)
    meta = None
    if path.is_file() and _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:
            raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from e
    raw = meta.get(CONFIG_KEY) if meta else None
    sidecar = path.with_name(path.name + ".json")
    if raw is None and sidecar.is_file():
        raw = sidecar.read_text()
    if raw is None:
        return None
    try:
        return config_from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"the config stored with {path} is invalid: {e}") from e


def load_state_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:6]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:6]}")
        if wrong:
            parts.append("shape mismatches: " + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:4]))
        raise ModelFileError(
            f"{source} does not match the {model.cfg.name} architecture: " + "; ".join(parts),
            hint="check the --config/preset matches the checkpoint",
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
