"""Backbones giving C2-C5 (strides 4, 8, 16, 32), built from torchvision's own definitions.

The torchvision module is kept whole under ``.net`` (classifier removed), so torchvision/ImageNet
state_dicts load into it with their original key names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

# MobileNetV2 feature indices at the end of each stride (4, 8, 16, 32)
_MBV2_STAGES = ((0, 4), (4, 7), (7, 14), (14, 18))
_MBV2_CHANNELS = (24, 32, 96, 320)


class Backbone(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        if name.startswith("resnet"):
            self.net = getattr(torchvision.models, name)(weights=None)
            self.net.fc = nn.Identity()
            expansion = 4 if name in ("resnet50", "resnet101", "resnet152") else 1
            self.channels = tuple(c * expansion for c in (64, 128, 256, 512))
        elif name == "mobilenet_v2":
            self.net = torchvision.models.mobilenet_v2(weights=None)
            self.net.classifier = nn.Identity()
            # the last 1x1 conv to 1280 channels is classifier-side; C5 is the 320-channel map
            self.net.features[18] = nn.Identity()
            self.channels = _MBV2_CHANNELS
        else:
            raise ValueError(f"unknown backbone {name!r}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.name.startswith("resnet"):
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            c2 = n.layer1(x)
            c3 = n.layer2(c2)
            c4 = n.layer3(c3)
            c5 = n.layer4(c4)
            return [c2, c3, c4, c5]
        feats = []
        for a, b in _MBV2_STAGES:
            for i in range(a, b):
                x = self.net.features[i](x)
            feats.append(x)
        return feats

    def load_imagenet(self, path: str) -> None:
        """Load torchvision ImageNet weights (a plain state_dict) without executing pickled code."""
        from rfdeploy.models.checkpoint import read_state_dict

        sd = read_state_dict(path)
        own = self.net.state_dict()
        # classifier / fc / the dropped 1280-channel conv are not part of the backbone
        usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in usable]
        if missing:
            raise ValueError(f"ImageNet weights at {path} miss backbone keys, e.g. {missing[:5]}")
        self.net.load_state_dict(usable, strict=False)
