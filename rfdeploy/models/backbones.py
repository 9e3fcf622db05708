"""Backbones giving C2-C5 (strides 4, 8, 16, 32).

ResNets and MobileNetV2 come from torchvision's own definitions, kept whole under ``.net``
(classifier removed), so torchvision/ImageNet state_dicts load with their original key names.
``mobilenet_v1_025`` is MobileNetV1 at width 0.25 in the layout of RetinaFace-MobileNet0.25
(stages ``stage1..3``, LeakyReLU 0.1), so a WIDER FACE-trained copy of it can be imported
(``rfdeploy.models.backbone_import``). ``mobilenet_v2_relu`` is torchvision's MobileNetV2 with
ReLU in place of ReLU6, the variant CenterFace was trained with.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from rfdeploy.models.checkpoint import read_state_dict

# MobileNetV2 feature indices at the end of each stride (4, 8, 16, 32)
_MBV2_STAGES = ((0, 4), (4, 7), (7, 14), (14, 18))
_MBV2_CHANNELS = (24, 32, 96, 320)
# MobileNetV1-0.25 (RetinaFace layout): blocks of stage1 up to C2 (stride 4, 32 ch) and the
# channels of C2-C5
_MNV1_C2_BLOCKS = 4
_MNV1_CHANNELS = (32, 64, 128, 256)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.1, inplace=True))


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with BN and LeakyReLU 0.1."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                      nn.LeakyReLU(0.1, inplace=True)),
        nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
                      nn.LeakyReLU(0.1, inplace=True)),
    )


class MobileNetV1x025(nn.Module):
    """MobileNetV1, width 0.25, as RetinaFace-MobileNet0.25 lays it out (210 k parameters)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2), _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.stage1[:_MNV1_C2_BLOCKS](x)
        c3 = self.stage1[_MNV1_C2_BLOCKS:](c2)
        c4 = self.stage2(c3)
        return [c2, c3, c4, self.stage3(c4)]

    def stage_modules(self) -> list[nn.Module]:
        """The modules producing C2, C3, C4, C5, in order (for freezing stages)."""
        return [self.stage1[:_MNV1_C2_BLOCKS], self.stage1[_MNV1_C2_BLOCKS:], self.stage2, self.stage3]


class Backbone(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        if name.startswith("resnet"):
            self.net = getattr(torchvision.models, name)(weights=None)
            self.net.fc = nn.Identity()
            expansion = 4 if name in ("resnet50", "resnet101", "resnet152") else 1
            self.channels = tuple(c * expansion for c in (64, 128, 256, 512))
        elif name in ("mobilenet_v2", "mobilenet_v2_relu"):
            self.net = torchvision.models.mobilenet_v2(weights=None)
            self.net.classifier = nn.Identity()
            # the last 1x1 conv to 1280 channels is classifier-side; C5 is the 320-channel map
            self.net.features[18] = nn.Identity()
            if name == "mobilenet_v2_relu":
                for mod in self.net.modules():
                    for child_name, child in mod.named_children():
                        if isinstance(child, nn.ReLU6):
                            setattr(mod, child_name, nn.ReLU(inplace=True))
            self.channels = _MBV2_CHANNELS
        elif name == "mobilenet_v1_025":
            self.net = MobileNetV1x025()
            self.channels = _MNV1_CHANNELS
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
        if self.name == "mobilenet_v1_025":
            return self.net(x)
        feats = []
        for a, b in _MBV2_STAGES:
            for i in range(a, b):
                x = self.net.features[i](x)
            feats.append(x)
        return feats

    def stage_modules(self) -> list[nn.Module]:
        """Modules computing C2..C5 in order (the stem belongs to the first)."""
        if self.name.startswith("resnet"):
            n = self.net
            return [nn.ModuleList([n.conv1, n.bn1, n.layer1]), n.layer2, n.layer3, n.layer4]
        if self.name == "mobilenet_v1_025":
            return self.net.stage_modules()
        return [nn.ModuleList([self.net.features[i] for i in range(a, b)]) for a, b in _MBV2_STAGES]

    def load_imagenet(self, path: str) -> None:
        """Load torchvision ImageNet weights (a plain state_dict) without executing pickled code."""

        sd = read_state_dict(path)
        own = self.net.state_dict()
        # classifier / fc / the dropped 1280-channel conv are not part of the backbone
        usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in usable]
        if missing:
            raise ValueError(f"ImageNet weights at {path} miss backbone keys, e.g. {missing[:5]}")
        self.net.load_state_dict(usable, strict=False)
