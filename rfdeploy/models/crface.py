"""CRFace confidence ranker (Vesdapunt & Wang): re-scores any detector's candidates.

Inputs: the whole image (downscaled, see RankerConfig.contract) and an N x 5 matrix of candidates
(x, y, w, h normalised by image width/height, score), sorted by score descending, zero-padded.
Output: refined scores [B, N] = clip(score + residual, 0, 1); padded rows stay 0.

With ``RankerConfig.roi_head`` each row also reads the backbone's features inside its own box
(:class:`RoiFeatures`), so its residual can depend on what the box contains.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfdeploy.models.backbones import Backbone
from rfdeploy.models.config import RankerConfig


class BoxProcessingNetwork(nn.Module):
    """BPN: convolutions over the N x 5 candidate matrix, 64 channels, kernel 3x5 (padding 1x2)
    keeping N x 5, leaky ReLU, skip connections on every layer but the first. The output of every
    third layer is handed to the image branch."""

    def __init__(self, channels: int, layers: int, kernel: tuple[int, int]):
        super().__init__()
        pad = (kernel[0] // 2, kernel[1] // 2)
        self.convs = nn.ModuleList(
            [nn.Conv2d(1 if i == 0 else channels, channels, kernel, padding=pad) for i in range(layers)]
        )

    def forward(self, boxes: torch.Tensor) -> list[torch.Tensor]:
        x = boxes.unsqueeze(1)  # B,1,N,5
        taps = []
        for i, conv in enumerate(self.convs):
            y = F.leaky_relu(conv(x), 0.1)
            x = y if i == 0 else x + y
            if (i + 1) % 3 == 0:
                taps.append(x)
        return taps


# strides of the backbone's C2-C5 maps (every Backbone kind)
_STRIDES = (4, 8, 16, 32)


def roi_points(boxes: torch.Tensor, size: int, expand: float) -> torch.Tensor:
    """Sample points of each row's box, grown by ``expand`` about its centre: [B,N,5] (x, y, w, h
    normalised by the image) -> [B, N, size*size, 2] (x, y), normalised by the image, row-major
    cell centres."""
    steps = (torch.arange(size, dtype=boxes.dtype, device=boxes.device) + 0.5) / size - 0.5  # -0.5..0.5
    cx = boxes[..., 0] + boxes[..., 2] * 0.5
    cy = boxes[..., 1] + boxes[..., 3] * 0.5
    px = cx[..., None] + boxes[..., 2:3] * expand * steps  # B,N,S
    py = cy[..., None] + boxes[..., 3:4] * expand * steps
    gx = px[:, :, None, :].expand(-1, -1, size, -1)  # B,N,S(y),S(x)
    gy = py[:, :, :, None].expand(-1, -1, -1, size)
    return torch.stack([gx, gy], dim=-1).flatten(2, 3)


class RoiFeatures(nn.Module):
    """Each row's own pixels: the C2-C4 maps, each narrowed by a 1x1 convolution, sampled
    bilinearly at ``size`` x ``size`` points inside its box (grown by ``expand`` for context) and
    read out by a (1 x size*size) convolution per map, summed: [B, out, N, 1].

    GridSample rather than RoiAlign: it is a core ONNX op that TensorRT runs without a plugin.
    The maps are narrowed before sampling and the points read by a convolution over the sampled
    layout (no transpose, no concat): sampling 1000 rows x 224 channels had been half the ranker's
    CPU time. Boxes are normalised by the image; the image fills the input tensor (the ranker's
    contract does not pad), except in training, where ``extent`` [B, 2] gives the fraction of the
    padded batch tensor's width and height that the image covers."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, size: int, expand: float, width: int = 16):
        super().__init__()
        self.size, self.expand = size, expand
        self.narrow = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        self.read = nn.ModuleList([nn.Conv2d(width, out_channels, (1, size * size)) for _ in in_channels])
        # zero-initialised read-out: the head starts from what the rest of the ranker says
        for r in self.read:
            nn.init.zeros_(r.weight)
            nn.init.zeros_(r.bias)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor, boxes: torch.Tensor,
                extent: torch.Tensor | None = None) -> torch.Tensor:
        """feats: C2.. maps of ``image`` (the input tensor); -> [B, out, N, 1]."""
        pts = roi_points(boxes[..., :4].float(), self.size, self.expand)  # B,N,SS,2
        if extent is not None:
            pts = pts * extent[:, None, None, :].to(pts.dtype)
        # sizes as tensors, so an ONNX export computes them from the input's shape
        image_wh = torch._shape_as_tensor(image)[[3, 2]].to(pts.dtype)
        out = 0
        for f, stride, narrow, read in zip(feats, _STRIDES, self.narrow, self.read):
            # a map of Wf cells spans Wf * stride input pixels (>= W: the convolutions round up)
            span = image_wh / (torch._shape_as_tensor(f)[[3, 2]].to(pts.dtype) * stride)
            grid = (pts * span * 2.0 - 1.0).to(f.dtype)
            sampled = F.grid_sample(narrow(f), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out = out + read(sampled)  # B,C,N,SS -> B,out,N,1
        return out


class BoxHead(nn.Module):
    """Per-candidate residual (``RankerConfig.box_head``): row i's last BPN features (its box and
    score, with its sorted neighbours in the BPN's field of view) and the pooled image context
    give row i's residual. In the paper's head a row's residual is a fixed linear read-out of one
    pooled vector, so nothing there ties it to that row's own input."""

    def __init__(self, bpn_channels: int, context_channels: int, kernel_width: int = 5):
        super().__init__()
        self.row = nn.Conv2d(bpn_channels, bpn_channels, (1, kernel_width))
        self.context = nn.Linear(context_channels, bpn_channels)
        self.hidden = nn.Conv2d(bpn_channels, bpn_channels, 1)
        self.out = nn.Conv2d(bpn_channels, 1, 1)
        # zero-initialised like the paper's FC: untrained, the ranker returns the detector's scores
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, rows: torch.Tensor, context: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        """rows [B,C,N,5], context [B,K], roi [B,C,N,1] or None -> residual [B,N]."""
        h = self.row(rows) + self.context(context)[:, :, None, None]  # B,C,N,1
        if roi is not None:
            h = h + roi
        h = F.leaky_relu(h, 0.1)
        h = F.leaky_relu(self.hidden(h), 0.1)
        return self.out(h)[:, 0, :, 0]


class CRFace(nn.Module):
    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone)
        self.bpn = BoxProcessingNetwork(cfg.bpn_channels, cfg.bpn_layers, cfg.bpn_kernel)
        joins = cfg.bpn_layers // 3
        # FPN over the last `joins` backbone stages (C3-C5 for the paper's 9-layer BPN); each lateral
        # takes the backbone stage concatenated with the BPN features resized to its size.
        stage_channels = self.backbone.channels[-joins:]
        self.lateral = nn.ModuleList(
            [nn.Conv2d(c + cfg.bpn_channels, cfg.fpn_channels, 1) for c in stage_channels]
        )
        self.smooth = nn.ModuleList(
            [nn.Conv2d(cfg.fpn_channels, cfg.fpn_channels, 3, padding=1) for _ in stage_channels]
        )
        self.conf_convs = nn.ModuleList(
            [nn.Conv2d(cfg.fpn_channels, cfg.conf_channels, 3, padding=1) for _ in stage_channels]
        )
        self.conf_fc = nn.ModuleList([nn.Linear(cfg.conf_channels, cfg.num_boxes) for _ in stage_channels])
        # zero-initialised output layer: an untrained ranker returns the detector's scores
        for fc in self.conf_fc:
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.box_head = BoxHead(cfg.bpn_channels, cfg.conf_channels) if cfg.box_head else None
        self.roi = (RoiFeatures(self.backbone.channels[:3], cfg.bpn_channels, cfg.roi_size, cfg.roi_expand)
                    if cfg.roi_head else None)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor, clip: bool = True,
                extent: torch.Tensor | None = None) -> torch.Tensor:
        """Refined scores [B, N]. ``clip=False`` (training) skips the clip to [0, 1]: a clipped
        score has no gradient and clipped neighbours tie, so rows pushed past 0 or 1 would leave
        the ranking loss at ln 2 for good (see ``losses.ranker_loss``). ``extent`` (training
        batches padded to one size): see :class:`RoiFeatures`."""
        dtype = self.lateral[0].weight.dtype  # callers may pass fp32 inputs to an fp16 model
        all_feats = self.backbone(image.to(dtype))
        feats = all_feats[-len(self.lateral):]
        taps = self.bpn(boxes.to(dtype))
        lat = [
            l(torch.cat([f, F.interpolate(t, size=f.shape[-2:], mode="nearest")], dim=1))
            for l, f, t in zip(self.lateral, feats, taps)
        ]
        td = [lat[-1]]
        for x in reversed(lat[:-1]):
            td.insert(0, x + F.interpolate(td[0], size=x.shape[-2:], mode="nearest"))
        residual, context = 0, 0
        for s, conv, fc, x in zip(self.smooth, self.conf_convs, self.conf_fc, td):
            pooled = F.relu(conv(s(x))).mean(dim=(2, 3))
            residual = residual + fc(pooled)
            context = context + pooled
        # score + residual + clip in float32 whatever the network's precision: fp16's spacing
        # near 1 (4.9e-4) would erase the fine re-ordering the ranker exists for
        residual = residual.float() / len(td)
        if self.box_head is not None:
            roi = None
            if self.roi is not None:
                roi = self.roi(all_feats[:3], image, boxes, extent).to(dtype)
            residual = residual + self.box_head(taps[-1], context / len(td), roi).float()
        scores = boxes[..., 4].float()
        valid = (scores > 0).float()
        refined = scores + residual
        return (refined.clamp(0.0, 1.0) if clip else refined) * valid
