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

from rfdeploy.models.anchors import anchor_shapes, cxcywh_to_xyxy, decode, level_anchors
from rfdeploy.models.backbones import Backbone
from rfdeploy.models.config import TENSORRT_MAX_TOPK, DetectorConfig


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def sep3x3(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Depthwise-separable 3x3: depthwise 3x3 then pointwise 1x1 (about 1/8 of a dense 3x3's
    work at 32 channels, which is what makes stride-4 heads affordable on a CPU)."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin), nn.Conv2d(cin, cout, 1))


def conv3(cin: int, cout: int, stride: int = 1, separable: bool = False) -> nn.Module:
    return sep3x3(cin, cout, stride) if separable else conv3x3(cin, cout, stride)


class RFE(nn.Module):
    """Receptive Field Enhancement (paper 3.5, Fig. 7): four branches, each a 1x1 to C/4 then one
    rectangular conv (1x3, 3x1, 1x5, 5x1), concatenated, fused by a 1x1, plus a shortcut.

    The parameters are the paper's (one 1x1 per branch, stored as one 1x1 conv to 4 x C/4
    channels). The forward pass runs the same arithmetic in fewer, larger nodes, which a CPU
    runtime executes faster (fewer layout changes, fewer kernel launches): the two horizontal
    branches (1x3, 1x5) as one grouped 1x5 conv and the two vertical ones as one grouped 5x1
    conv, the shorter kernel zero-padded; the channels are regrouped by permuting the reduction's
    outputs and the fusion's inputs. Only an ONNX export takes that form, where every built weight
    is a constant and is folded; eager PyTorch (training, the torch backend) runs the plain layout
    and builds no weights per call."""

    KERNELS = ((1, 3), (3, 1), (1, 5), (5, 1))
    PAIRS = ((0, 2), (1, 3))  # (1x3, 1x5) horizontal, (3x1, 5x1) vertical

    def __init__(self, channels: int):
        super().__init__()
        self.c4 = c4 = max(1, channels // 4)
        self.reduce = nn.Conv2d(channels, 4 * c4, 1)
        self.rect = nn.ModuleList([nn.Conv2d(c4, c4, k, padding=(k[0] // 2, k[1] // 2)) for k in self.KERNELS])
        self.fuse = nn.Conv2d(4 * c4, channels, 1)
        self._branch_order = [b for pair in self.PAIRS for b in pair]
        self._order = [b * c4 + i for b in self._branch_order for i in range(c4)]  # reduction channel per paired slot

    def _pair_conv(self, pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        short, long_ = (self.rect[b] for b in pair)
        kh, kw = long_.kernel_size
        dh, dw = kh - short.kernel_size[0], kw - short.kernel_size[1]
        w_short = F.pad(short.weight, (dw // 2, dw // 2, dh // 2, dh // 2))
        return (torch.cat([w_short, long_.weight]), torch.cat([short.bias, long_.bias]), (kh // 2, kw // 2))

    def _paired(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the horizontal and the vertical pair (each 2 x C/4 channels, branch order of PAIRS)."""
        r = F.relu(F.conv2d(x, self.reduce.weight[self._order], self.reduce.bias[self._order]))
        outs = []
        for pair, part in zip(self.PAIRS, r.split(2 * self.c4, dim=1)):
            w, b, pad = self._pair_conv(pair)
            outs.append(F.relu(F.conv2d(part, w, b, padding=pad, groups=2)))
        return outs

    def branch_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branches' outputs in KERNELS order, as computed by the forward pass."""
        parts = [t for pair_out in self._paired(x) for t in pair_out.split(self.c4, dim=1)]
        return [parts[self._branch_order.index(k)] for k in range(len(self.KERNELS))]

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's layout node by node: four 1x1 reductions, four rectangular convs, concat."""
        parts = F.relu(self.reduce(x)).split(self.c4, dim=1)
        y = self.fuse(torch.cat([F.relu(conv(p)) for conv, p in zip(self.rect, parts)], dim=1))
        return F.relu(x + y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return self.reference_forward(x)
        y = F.conv2d(torch.cat(self._paired(x), dim=1), self.fuse.weight[:, self._order], self.fuse.bias)
        return F.relu(x + y)


class StackedRFE(nn.Module):
    """The earlier RFE form (each branch 1x1, 1xk then kx1: a square k x k field), kept only so
    checkpoints made with it still load (``rfe_layout="stacked"``)."""

    def __init__(self, channels: int):
        super().__init__()
        c4 = max(1, channels // 4)

        def branch(a: tuple[int, int]) -> nn.Sequential:
            b = (a[1], a[0])
            return nn.Sequential(
                nn.Conv2d(channels, c4, 1), nn.ReLU(inplace=True),
                nn.Conv2d(c4, c4, a, padding=(a[0] // 2, a[1] // 2)), nn.ReLU(inplace=True),
                nn.Conv2d(c4, c4, b, padding=(b[0] // 2, b[1] // 2)), nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList([branch(k) for k in RFE.KERNELS])
        self.fuse = nn.Conv2d(4 * c4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return F.relu(x + y)


class Subnet(nn.Module):
    """RetinaNet class/box subnet; with RFE the middle two 3x3 convs are RFE blocks (the middle
    one in a 3-conv tower)."""

    def __init__(self, cin: int, width: int, convs: int, out_per_anchor: int, anchors: int, rfe: bool,
                 separable: bool = False, rfe_layout: str = "paper"):
        super().__init__()
        if convs == 0:  # a predictor alone, on a tower shared with other subnets
            width = cin
        layers: list[nn.Module] = []
        for i in range(convs):
            middle = rfe and 1 <= i <= min(2, convs - 2)
            if middle:
                layers.append(StackedRFE(width) if rfe_layout == "stacked" else RFE(width))
            else:
                layers += [conv3(cin if i == 0 else width, width, separable=separable), nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*layers)
        self.pred = conv3(width, anchors * out_per_anchor, separable=separable) if anchors else None
        self.out_per_anchor = out_per_anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """-> [B, H*W*A, out_per_anchor], ordered y, x, anchor (as anchors.level_anchors)."""
        y = self.pred(self.tower(x))
        b = y.shape[0]
        return y.permute(0, 2, 3, 1).reshape(b, -1, self.out_per_anchor)


class FPN(nn.Module):
    """P2-P5 by lateral 1x1 + top-down nearest upsampling + 3x3 smoothing; P6, P7 by two stride-2
    3x3 convs after P5. C6, C7 likewise by two stride-2 3x3 convs after C5."""

    def __init__(self, in_channels: tuple[int, ...], width: int, separable: bool = False):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        self.smooth = nn.ModuleList([conv3(width, width, separable=separable) for _ in in_channels])
        self.c6 = conv3(in_channels[-1], width, stride=2, separable=separable)
        self.c7 = conv3(width, width, stride=2, separable=separable)
        self.p6 = conv3(width, width, stride=2, separable=separable)
        self.p7 = conv3(width, width, stride=2, separable=separable)

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
        sep = cfg.separable
        self.fpn = FPN(self.backbone.channels, cfg.fpn_channels, separable=sep)
        w, n, rfe = cfg.head_channels, cfg.head_convs, cfg.use_rfe
        # One classification module for both STC steps (paper 3.2); the first-step regressor
        # (STR) has its own subnet.
        lay = cfg.rfe_layout
        if cfg.shared_tower:
            self.tower = Subnet(cfg.fpn_channels, w, n, 0, 0, rfe, sep, lay).tower
            cin, n = w, 0  # the predictors below read the shared tower's output
        else:
            self.tower, cin = None, cfg.fpn_channels
        self.cls_head = Subnet(cin, w, n, 1, a, rfe, sep, lay)
        self.box_head = Subnet(cin, w, n, 4, a, rfe, sep, lay)
        self.box_head_first = Subnet(cin, w, n, 4, a, rfe, sep, lay)
        # Anchor sizes per level as buffers (they follow .to(device)); full anchor grids are cached
        # per feature size, so a repeated input shape makes no tensor from host data (CUDA-graph
        # capture forbids host-to-device copies)
        for l, st in enumerate(cfg.strides):
            self.register_buffer(f"anchor_wh{l}", torch.tensor(anchor_shapes(st, cfg.anchor_scales, cfg.anchor_ratio)),
                                 persistent=False)
        self._anchor_cache: dict = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in [self.fpn, self.tower, self.cls_head, self.box_head, self.box_head_first]:
            if m is None:
                continue
            for mod in m.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.xavier_uniform_(mod.weight)
                    nn.init.zeros_(mod.bias)
        # focal-loss prior: start with a small p(face) so early training is not swamped by
        # negatives; 0.02 rather than RetinaNet's 0.01 keeps the STC filter (1 - p > 0.99) from
        # rejecting every anchor before training starts
        pred = self.cls_head.pred
        last = pred[-1] if isinstance(pred, nn.Sequential) else pred
        nn.init.constant_(last.bias, -math.log((1 - 0.02) / 0.02))

    def _anchors(self, level: int, feat: torch.Tensor) -> torch.Tensor:
        """float32 anchors of a level for a feature map; cached per size outside tracing."""
        h, w = feat.shape[-2], feat.shape[-1]
        wh = getattr(self, f"anchor_wh{level}")
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if tracing:
            return level_anchors(h, w, self.cfg.strides[level], device=feat.device, shapes=wh)
        key = (level, int(h), int(w), feat.device)
        a = self._anchor_cache.get(key)
        if a is None:
            if len(self._anchor_cache) > 64:  # bounded: tiles and pyramid passes repeat few sizes
                self._anchor_cache.clear()
            a = self._anchor_cache[key] = level_anchors(h, w, self.cfg.strides[level], device=feat.device, shapes=wh)
        return a

    def _apply(self, fn, *args, **kwargs):
        # anchor sizes stay exact float32 through .half() and follow the device; cached grids
        # are dropped on any device or dtype change
        self._anchor_cache = {}
        names = [f"anchor_wh{l}" for l in range(len(self.cfg.strides))]
        kept = {n: getattr(self, n) for n in names}
        out = super()._apply(fn, *args, **kwargs)
        for n, t in kept.items():
            setattr(self, n, t.to(device=getattr(self, n).device, dtype=torch.float32))
        return out

    def forward_raw(self, images: torch.Tensor, anchors: bool = True) -> dict:
        """Head outputs (and, with ``anchors``, the anchors) per level: what the losses and the
        decoder consume."""
        cfg = self.cfg
        images = images.to(self.fpn.lateral[0].weight.dtype)  # callers may pass fp32 to an fp16 model
        first, second = self.fpn(self.backbone(images))
        b = images.shape[0]
        if self.tower is not None:
            out = self._shared_heads(first, second, b)
        else:
            out = self._separate_heads(first, second, b)
        out["features"] = second
        if anchors:
            out["anchors"] = [self._anchors(l, f) for l, f in enumerate(second)]
        return out

    def _shared_heads(self, first: list[torch.Tensor], second: list[torch.Tensor], b: int) -> dict:
        """One tower pass per level on the first-step map and P stacked in the batch; the
        predictors read its two halves."""
        cfg = self.cfg
        cls1, reg1, cls2, reg2 = {}, {}, [], []
        for l, p in enumerate(second):
            two_step = l in cfg.stc_levels or l in cfg.str_levels
            t = self.tower(torch.cat([first[l], p], 0) if two_step else p)
            t1, t2 = (t[:b], t[b:]) if two_step else (None, t)
            if l in cfg.stc_levels:
                both = self.cls_head(t)[..., 0]  # both STC steps in one predictor call
                cls1[l], score = both[:b], both[b:]
            else:
                score = self.cls_head(t2)[..., 0]
                if l in cfg.str_levels:
                    reg1[l] = self.box_head_first(t1)
            cls2.append(score)
            reg2.append(self.box_head(t2))
        return {"cls1": cls1, "reg1": reg1, "cls2": cls2, "reg2": reg2}

    def _separate_heads(self, first: list[torch.Tensor], second: list[torch.Tensor], b: int) -> dict:
        cfg = self.cfg
        cls1, cls2 = {}, []
        for l, p in enumerate(second):
            if l in cfg.stc_levels:
                # both STC steps share the classification module and, per level, the feature size:
                # one call on the two maps stacked in the batch instead of two (fewer graph nodes)
                both = self.cls_head(torch.cat([first[l], p], 0))[..., 0]
                cls1[l], score = both[:b], both[b:]
            else:
                score = self.cls_head(p)[..., 0]
            cls2.append(score)
        return {
            "cls1": cls1,
            "reg1": {l: self.box_head_first(first[l]) for l in cfg.str_levels},
            "cls2": cls2,
            "reg2": [self.box_head(p) for p in second],
        }

    def _grid(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What maps a flat candidate index to its anchor, per level plus one padding level:
        first flat index (int64 [L+1]; the last is where the padding rows start), feature width
        (int64 [L+1]), stride (float32 [L+1], 0 for padding) and anchor sizes (float32
        [(L+1)*A, 2], zeros for padding). Built from the traced shapes when exporting, so the
        graph stays valid for any input size; cached per feature size otherwise."""
        a = self.cfg.num_anchors
        dev = feats[0].device

        def sizes() -> torch.Tensor:
            return torch.cat([getattr(self, f"anchor_wh{l}") for l in range(len(feats))]
                             + [self.anchor_wh0.new_zeros((a, 2))], 0)

        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            shapes = [torch._shape_as_tensor(f) for f in feats]
            counts = [s[2] * s[3] * a for s in shapes]
            starts = [counts[0] * 0]
            for n in counts:
                starts.append(starts[-1] + n)
            widths = torch.stack([s[3] for s in shapes] + [starts[0] + 1])
            strides = torch.tensor([float(s) for s in self.cfg.strides] + [0.0], device=dev)
            return torch.stack(starts), widths, strides, sizes()
        key = ("grid", tuple((int(f.shape[-2]), int(f.shape[-1])) for f in feats), dev)
        cached = self._anchor_cache.get(key + ("starts",))
        if cached is None:
            if len(self._anchor_cache) > 64:
                self._anchor_cache.clear()
            counts = [int(f.shape[-2]) * int(f.shape[-1]) * a for f in feats]
            starts = [0]
            for n in counts:
                starts.append(starts[-1] + n)
            self._anchor_cache[key + ("starts",)] = torch.tensor(starts, device=dev)
            self._anchor_cache[key + ("widths",)] = torch.tensor([int(f.shape[-1]) for f in feats] + [1], device=dev)
            self._anchor_cache[key + ("strides",)] = torch.tensor([float(s) for s in self.cfg.strides] + [0.0],
                                                                 device=dev)
            self._anchor_cache[key + ("wh",)] = sizes()
        return tuple(self._anchor_cache[key + (n,)] for n in ("starts", "widths", "strides", "wh"))

    def _anchors_at(self, idx: torch.Tensor, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchors (cx, cy, w, h) [B,K,4] of flat candidate indices (levels concatenated, then the
        padding rows), the same values as ``level_anchors``, and each index's level [B,K]
        (``len(feats)`` for padding). Computed from the indices alone: the full anchor grids
        cost more graph nodes than the network's small levels."""
        starts, widths, strides, wh = self._grid(feats)
        a = self.cfg.num_anchors
        level = (idx.unsqueeze(-1) >= starts[1:]).sum(-1)  # [B,K] in 0..L
        local = idx - starts[level]
        cell = torch.div(local, a, rounding_mode="floor")
        anchor = local - cell * a
        w = widths[level]
        y = torch.div(cell, w, rounding_mode="floor")
        x = cell - y * w
        stride = strides[level]
        cx = (x.to(torch.float32) + 0.5) * stride
        cy = (y.to(torch.float32) + 0.5) * stride
        size = wh[level * a + anchor]  # [B,K,2]
        return torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), size], -1), level

    def decode_levels(self, raw: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: boxes [B, n_l, 4] (x1, y1, x2, y2 input pixels) and scores [B, n_l]."""
        cfg = self.cfg
        cv, sv = cfg.center_variance, cfg.size_variance
        boxes, scores = [], []
        # decoding, the STC test and selection run in float32 whatever the network's precision:
        # 0.99 is 5e-4 from 1 in fp16, and pixel boxes at 8K need more than fp16's 11 bits
        for l, anchors in enumerate(raw["anchors"]):
            score = torch.sigmoid(raw["cls2"][l].float())
            if l in raw["cls1"]:
                # STC: anchors the first step is sure are background (1 - p1 > threshold) are dropped
                neg = 1.0 - torch.sigmoid(raw["cls1"][l].float())
                score = torch.where(neg > cfg.stc_threshold, torch.zeros_like(score), score)
            a = anchors.float().unsqueeze(0)
            if l in raw["reg1"]:
                # STR: the first step refines the anchors, the second regresses from the refined ones
                a = decode(raw["reg1"][l].float(), a, cv, sv)
            boxes.append(cxcywh_to_xyxy(decode(raw["reg2"][l].float(), a, cv, sv)))
            scores.append(score)
        return boxes, scores

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes [B,K,4], scores [B,K]: the same candidates as ``decode_levels`` + ``select_candidates``,
        but only the K selected anchors are built and decoded (every anchor costs more than the
        selection on a CPU)."""
        raw = self.forward_raw(images, anchors=False)
        cfg = self.cfg
        cv, sv = cfg.center_variance, cfg.size_variance
        scores, first_deltas, deltas = [], [], []
        for l, reg2 in enumerate(raw["reg2"]):
            score = torch.sigmoid(raw["cls2"][l].float())
            if l in raw["cls1"]:
                neg = 1.0 - torch.sigmoid(raw["cls1"][l].float())
                score = torch.where(neg > cfg.stc_threshold, torch.zeros_like(score), score)
            scores.append(score)
            deltas.append(reg2.float())
            # STR levels refine their anchors first; elsewhere zero deltas decode to the anchor
            # itself, exactly (a + 0 * w, w * exp(0))
            first_deltas.append(raw["reg1"][l].float() if l in raw["reg1"] else torch.zeros_like(deltas[-1]))
        k = cfg.candidates
        b = scores[0].shape[0]
        # k padding rows (score -1, empty anchor) keep the selection valid for any input size;
        # a padding row decodes to the empty box at the origin and scores 0
        s = torch.cat(scores + [scores[0].new_full((b, k), -1.0)], 1)
        d1 = torch.cat(first_deltas + [deltas[0].new_zeros((b, k, 4))], 1)
        d = torch.cat(deltas + [deltas[0].new_zeros((b, k, 4))], 1)
        top, idx = _topk_chunked(s, k)
        pick = idx.unsqueeze(-1).expand(-1, -1, 4)
        anchors, _ = self._anchors_at(idx, raw["features"])
        anchors = decode(torch.gather(d1, 1, pick), anchors, cv, sv)
        boxes = cxcywh_to_xyxy(decode(torch.gather(d, 1, pick), anchors, cv, sv))
        return boxes, top.clamp(min=0.0)


def _topk_chunked(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (values, indices) built from TopKs of at most TENSORRT_MAX_TOPK each.

    Above the TopK limit: take the top 3840, mask what was chosen (-2, below every padding row),
    take the next chunk from the rest, and so on; the chunks come out in descending order, so the
    result equals one TopK(k). ``scores`` needs at least k entries (callers pad).
    """
    tops, idxs, left = [], [], k
    while left > 0:
        q = min(left, TENSORRT_MAX_TOPK)
        top, idx = torch.topk(scores, q, dim=1)
        tops.append(top)
        idxs.append(idx)
        left -= q
        if left > 0:
            scores = scores.scatter(1, idx, -2.0)
    if len(tops) == 1:
        return tops[0], idxs[0]
    return torch.cat(tops, 1), torch.cat(idxs, 1)


def _topk_padded(boxes: torch.Tensor, scores: torch.Tensor, k: int):
    """Top-k of decoded boxes; k padding entries (score -1) make it valid whatever the image
    size (padded entries come out with score 0 and an empty box)."""
    b = scores.shape[0]
    scores = torch.cat([scores, scores.new_full((b, k), -1.0)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros((b, k, 4))], dim=1)
    top, idx = _topk_chunked(scores, k)
    sel = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return sel, top.clamp(min=0.0)


def select_candidates(boxes: list[torch.Tensor], scores: list[torch.Tensor], k: int):
    """Fixed-size candidate set: boxes [B,K,4], scores [B,K], the global top-K over every level,
    score-sorted."""
    return _topk_padded(torch.cat(boxes, 1), torch.cat(scores, 1), k)
