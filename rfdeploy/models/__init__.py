"""RefineFace (detector) and CRFace (ranker) in PyTorch, their configs and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from rfdeploy.core.errors import ModelFileError
from rfdeploy.models.config import (
    DetectorConfig,
    RankerConfig,
    config_from_dict,
    detector_config,
    preset_names,
    ranker_config,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
# The bundled checkpoints (torch backend, training) and their ONNX exports (every other backend),
# shipped side by side so a first run exports nothing. `python benchmarks/export_bundled.py`
# re-makes the ONNX files from the checkpoints; a test keeps the two equal.
DEFAULT_DETECTOR = WEIGHTS_DIR / "refineface_mnet025_default.safetensors"
DEFAULT_RANKER = WEIGHTS_DIR / "crface_roi_default.safetensors"
DEFAULT_DETECTOR_ONNX = DEFAULT_DETECTOR.with_suffix(".onnx")
DEFAULT_RANKER_ONNX = DEFAULT_RANKER.with_suffix(".onnx")


def build(cfg: DetectorConfig | RankerConfig):
    """An untrained model for a config."""
    if isinstance(cfg, DetectorConfig):
        from rfdeploy.models.refineface import RefineFace

        return RefineFace(cfg)
    if isinstance(cfg, RankerConfig):
        from rfdeploy.models.crface import CRFace

        return CRFace(cfg)
    raise TypeError(f"not a model config: {type(cfg).__name__}")


def config_for(name_or_cfg) -> DetectorConfig | RankerConfig:
    if isinstance(name_or_cfg, (DetectorConfig, RankerConfig)):
        return name_or_cfg
    if isinstance(name_or_cfg, dict):
        return config_from_dict(name_or_cfg)
    name = str(name_or_cfg)
    return ranker_config(name) if name.startswith("crface") else detector_config(name)


def load(path: str | os.PathLike, config=None):
    """Build the model a checkpoint describes and load its weights (eval mode, CPU, float32).

    ``config`` (a preset name, dict or config) is needed only for plain state_dicts without a
    sidecar JSON; it must agree with a config stored in the file.
    """
    from rfdeploy.models.checkpoint import load_state_into, read_config, read_state_dict

    sd = read_state_dict(path)
    stored = read_config(path)
    cfg = stored if stored is not None else (config_for(config) if config is not None else None)
    if cfg is None:
        raise ModelFileError(
            f"{path} carries no model config",
            hint=f"pass a preset ({', '.join(preset_names())}) or put a JSON config beside it as {Path(path).name}.json",
        )
    # a training checkpoint may include the FSM head (loss.fsm.*): inference never uses it
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    try:
        model = build(cfg)
    except (ValueError, TypeError, RuntimeError) as e:  # a stored config no network can be built from
        raise ModelFileError(f"{path}: its model config cannot be built ({e})") from None
    load_state_into(model, sd, str(path))
    return model.eval()


__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_DETECTOR_ONNX",
    "DEFAULT_RANKER",
    "DEFAULT_RANKER_ONNX",
    "DetectorConfig",
    "RankerConfig",
    "build",
    "config_for",
    "detector_config",
    "load",
    "ranker_config",
]
