"""RefineFace (Zhang et al.): ResNet/MobileNet + FPN P2-P7 with STC, STR and RFE.

``forward`` is the inference path and the exported graph: sigmoid scores, STC filtering, STR anchor
refinement, decoding to pixel boxes, and a fixed-size candidate selection, so outputs have static
shapes ``boxes [B,K,4]``, ``scores [B,K]``. NMS stays outside (the ranker needs the pre-NMS set).
The training-only parts (FSM, SML) live in ``losses.py`` and never touch this module's forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfdeploy.models.anchors import cxcywh_to_xyxy, decode, level_anchors
from rfdeploy.models.backbones import Backbone
from rfdeploy.models.config import TENSORRT_MAX_TOPK, DetectorConfig


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class RFE(nn.Module):
    """Receptive Field Enhancement: four branches (1x1 to C/4, then 1xk + kx1 or kx1 + 1xk,
    k = 3, 5), concatenated, fused by a 1x1, plus a shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        c4 = max(1, channels // 4)

        def branch(k: int, wide_first: bool) -> nn.Sequential:
            a, b = ((1, k), (k, 1)) if wide_first else ((k, 1), (1, k))
            pad = lambda s: (s[0] // 2, s[1] // 2)  # noqa: E731
            return nn.Sequential(
                nn.Conv2d(channels, c4, 1), nn.ReLU(inplace=True),
                nn.Conv2d(c4, c4, a, padding=pad(a)), nn.ReLU(inplace=True),
                nn.Conv2d(c4, c4, b, padding=pad(b)), nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList(
            [branch(3, True), branch(3, False), branch(5, True), branch(5, False)]
        )
        self.fuse = nn.Conv2d(4 * c4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return F.relu(x + y)


class Subnet(nn.Module):
    """RetinaNet class/box subnet; with RFE the middle two 3x3 convs are RFE blocks."""

    def __init__(self, cin: int, width: int, convs: int, out_per_anchor: int, anchors: int, rfe: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            middle = rfe and i in (1, 2)
            if middle:
                layers.append(RFE(width))
            else:
                layers += [conv3x3(cin if i == 0 else width, width), nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*layers)
        self.pred = conv3x3(width, anchors * out_per_anchor)
        self.out_per_anchor = out_per_anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """-> [B, H*W*A, out_per_anchor], ordered y, x, anchor (as anchors.level_anchors)."""
        y = self.pred(self.tower(x))
        b = y.shape[0]
        return y.permute(0, 2, 3, 1).reshape(b, -1, self.out_per_anchor)


class FPN(nn.Module):
    """P2-P5 by lateral 1x1 + top-down nearest upsampling + 3x3 smoothing; P6, P7 by two stride-2
    3x3 convs after P5. C6, C7 likewise by two stride-2 3x3 convs after C5."""

    def __init__(self, in_channels: tuple[int, ...], width: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        self.smooth = nn.ModuleList([conv3x3(width, width) for _ in in_channels])
        self.c6 = conv3x3(in_channels[-1], width, stride=2)
        self.c7 = conv3x3(width, width, stride=2)
        self.p6 = conv3x3(width, width, stride=2)
        self.p7 = conv3x3(width, width, stride=2)

    def forward(self, c: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """-> (first-step features [L2, L3, L4, L5, C6, C7], second-step features [P2..P7]).

        L2-L5 are C2-C5 projected to the common width by the lateral convs, so one shared
        classification module serves both STC steps.
        """
        lat = [l(x) for l, x in zip(self.lateral, c)]
        td = [lat[-1]]
        for x in reversed(lat[:-1]):
            td.insert(0, x + F.interpolate(td[0], size=x.shape[-2:], mode="nearest"))
        p = [s(x) for s, x in zip(self.smooth, td)]
        p6 = self.p6(p[-1])
        p.append(p6)
        p.append(self.p7(F.relu(p6)))
        c6 = self.c6(c[-1])
        c7 = self.c7(F.relu(c6))
        return lat + [c6, c7], p


class RefineFace(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        a = cfg.num_anchors
        self.backbone = Backbone(cfg.backbone)
        self.fpn = FPN(self.backbone.channels, cfg.fpn_channels)
        w, n, rfe = cfg.head_channels, cfg.head_convs, cfg.use_rfe
        # One classification module for both STC steps (paper 3.2); the first-step regressor
        # (STR) has its own subnet.
        self.cls_head = Subnet(cfg.fpn_channels, w, n, 1, a, rfe)
        self.box_head = Subnet(cfg.fpn_channels, w, n, 4, a, rfe)
        self.box_head_first = Subnet(cfg.fpn_channels, w, n, 4, a, rfe)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in [self.fpn, self.cls_head, self.box_head, self.box_head_first]:
            for mod in m.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.xavier_uniform_(mod.weight)
                    nn.init.zeros_(mod.bias)
        # focal-loss prior: start with a small p(face) so early training is not swamped by
        # negatives; 0.02 rather than RetinaNet's 0.01 keeps the STC filter (1 - p > 0.99) from
        # rejecting every anchor before training starts
        nn.init.constant_(self.cls_head.pred.bias, -math.log((1 - 0.02) / 0.02))

    def forward_raw(self, images: torch.Tensor) -> dict:
        """Head outputs and anchors per level: what the losses and the decoder consume."""
        cfg = self.cfg
        first, second = self.fpn(self.backbone(images))
        anchors = [
            level_anchors(f.shape[-2], f.shape[-1], s, cfg.anchor_scales, cfg.anchor_ratio, f.device, f.dtype)
            for f, s in zip(second, cfg.strides)
        ]
        return {
            "anchors": anchors,
            "features": second,
            "cls1": {l: self.cls_head(first[l])[..., 0] for l in cfg.stc_levels},
            "reg1": {l: self.box_head_first(first[l]) for l in cfg.str_levels},
            "cls2": [self.cls_head(p)[..., 0] for p in second],
            "reg2": [self.box_head(p) for p in second],
        }

    def decode_levels(self, raw: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: boxes [B, n_l, 4] (x1, y1, x2, y2 input pixels) and scores [B, n_l]."""
        cfg = self.cfg
        cv, sv = cfg.center_variance, cfg.size_variance
        boxes, scores = [], []
        for l, anchors in enumerate(raw["anchors"]):
            score = torch.sigmoid(raw["cls2"][l])
            if l in raw["cls1"]:
                # STC: anchors the first step is sure are background (1 - p1 > threshold) are dropped
                neg = 1.0 - torch.sigmoid(raw["cls1"][l])
                score = torch.where(neg > cfg.stc_threshold, torch.zeros_like(score), score)
            a = anchors.unsqueeze(0)
            if l in raw["reg1"]:
                # STR: the first step refines the anchors, the second regresses from the refined ones
                a = decode(raw["reg1"][l], a, cv, sv)
            boxes.append(cxcywh_to_xyxy(decode(raw["reg2"][l], a, cv, sv)))
            scores.append(score)
        return boxes, scores

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.decode_levels(self.forward_raw(images))
        return select_candidates(boxes, scores, self.cfg.candidates)


def level_quotas(k: int, levels: int) -> list[int]:
    """Split K candidates over pyramid levels when K exceeds TensorRT's TopK limit.

    Shares follow each level's anchor count (a level has 4x the anchors of the next), with every
    quota <= the TopK limit; the quotas add up to K.
    """
    if k <= TENSORRT_MAX_TOPK:
        return [k]
    weights = [4.0 ** -(i) for i in range(levels)]
    total = sum(weights)
    quotas = [max(1, int(k * w / total)) for w in weights]
    quotas[0] += k - sum(quotas)
    # cap at the TopK limit and pass any overflow on to the next level
    for i in range(levels - 1):
        if quotas[i] > TENSORRT_MAX_TOPK:
            quotas[i + 1] += quotas[i] - TENSORRT_MAX_TOPK
            quotas[i] = TENSORRT_MAX_TOPK
    if quotas[-1] > TENSORRT_MAX_TOPK:
        raise ValueError(f"{k} candidates cannot be split into TopKs of <= {TENSORRT_MAX_TOPK}")
    return quotas


def _topk_padded(boxes: torch.Tensor, scores: torch.Tensor, k: int):
    # Pad with k dummy entries (score -1) so TopK(k) is valid whatever the image size; padded
    # entries come out with score 0 and an empty box.
    b = scores.shape[0]
    scores = torch.cat([scores, scores.new_full((b, k), -1.0)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros((b, k, 4))], dim=1)
    top, idx = torch.topk(scores, k, dim=1)
    sel = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return sel, top.clamp(min=0.0)


def select_candidates(boxes: list[torch.Tensor], scores: list[torch.Tensor], k: int):
    """Fixed-size candidate set: boxes [B,K,4], scores [B,K] (score-sorted within each TopK)."""
    quotas = level_quotas(k, len(boxes))
    if len(quotas) == 1:
        return _topk_padded(torch.cat(boxes, 1), torch.cat(scores, 1), k)
    parts = [_topk_padded(b, s, q) for b, s, q in zip(boxes, scores, quotas)]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
