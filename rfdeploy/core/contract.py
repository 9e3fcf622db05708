"""The preprocessing contract: how pixels become the network's input tensor.

It is written into every exported model (ONNX ``metadata_props``, engine manifests; the key and
its reader are in rfdeploy.core.metadata) and every backend reads it from there, so there is
exactly one definition per model file. rfdeploy.core.preprocess implements it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PreprocessContract:
    # normalised = (pixel - mean) / std, pixels in 0..255, channel order as below.
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    # The image is padded bottom/right (value: zero after normalisation, i.e. the mean colour)
    # to a multiple of this, so every pyramid level has an integer size.
    pad_multiple: int = 32
    # "none": the image is fed at its own size (tiling handles large ones);
    # "long_side": resized so the long side equals `resize_to` (the ranker's whole-image view).
    resize: str = "none"
    resize_to: int = 0

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.layout != "NCHW":
            raise ValueError(f"only NCHW layout is supported, got {self.layout!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need three values each, std > 0")
        if self.pad_multiple < 1:
            raise ValueError("pad_multiple must be >= 1")
        if self.resize not in ("none", "long_side"):
            raise ValueError(f"resize must be 'none' or 'long_side', got {self.resize!r}")
        if self.resize == "long_side" and self.resize_to <= 0:
            raise ValueError("resize='long_side' needs resize_to > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessContract":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing contract fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "PreprocessContract":
        return cls.from_dict(json.loads(s))
