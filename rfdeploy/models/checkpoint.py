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
from rfdeploy.core import metadata
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.fsutil import atomic_write_bytes
from rfdeploy.models.config import DetectorConfig, RankerConfig, config_from_dict


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
    meta = {metadata.CONFIG: json.dumps(cfg.to_dict(), sort_keys=True), metadata.FORMAT: metadata.CHECKPOINT_FORMAT,
            metadata.VERSION: __version__}
    meta.update(extra_metadata or {})
    path = Path(path)
    atomic_write_bytes(path, metadata.canonical_safetensors(save(tensors, metadata=meta)))
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if metadata.is_safetensors(path):
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


def read_config(path: str | os.PathLike) -> DetectorConfig | RankerConfig | None:
    """The config stored with a checkpoint (safetensors metadata or sidecar JSON), if any."""
    path = Path(path)
    meta = metadata.safetensors_metadata(path) if path.is_file() and metadata.is_safetensors(path) else {}
    d = metadata.stored_config(meta, path, sidecar=path.with_name(path.name + ".json"))
    if d is None:
        return None
    try:
        return config_from_dict(d)
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
