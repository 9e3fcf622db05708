"""Training losses: STC (focal, both steps), STR (smooth L1, both steps), SML, FSM, and CRFace's
pairwise ranking loss. Nothing here is used by the inference path or the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import box_iou, nms, roi_align, sigmoid_focal_loss

from rfdeploy.models.anchors import cxcywh_to_xyxy, decode, encode
from rfdeploy.models.config import DetectorConfig

POS, NEG, IGNORE = 1, 0, -1


def match_anchors(anchors_xyxy, gt, gt_ignore, neg_thr: float, pos_thr: float):
    """Label anchors: IoU >= pos_thr -> face, < neg_thr -> background, between -> ignored.

    Every face also claims its best anchor (small faces would otherwise get no positive), and
    anchors that overlap an ignore-flagged face are neither positive nor negative.
    Returns (labels [A] in {1, 0, -1}, matched gt index [A]).
    """
    n = anchors_xyxy.shape[0]
    labels = torch.zeros(n, dtype=torch.long, device=anchors_xyxy.device)
    matched = torch.zeros(n, dtype=torch.long, device=anchors_xyxy.device)
    if gt.numel() == 0:
        return labels, matched
    iou = box_iou(gt, anchors_xyxy)  # G, A
    valid = ~gt_ignore
    iou_valid = iou.masked_fill(~valid[:, None], -1.0)
    best, matched = iou_valid.max(dim=0)
    labels[(best >= neg_thr) & (best < pos_thr)] = IGNORE
    labels[best >= pos_thr] = POS
    if valid.any():
        gi = valid.nonzero().squeeze(1)
        best_anchor = iou_valid[gi].argmax(dim=1)
        labels[best_anchor] = POS
        matched[best_anchor] = gi
    if gt_ignore.any():
        near_ignored = (iou[gt_ignore] >= neg_thr).any(dim=0)
        labels[near_ignored & (labels != POS)] = IGNORE
    return labels, matched


def scale_aware_margin(widths, heights, alpha: float) -> torch.Tensor:
    """SML margin m = alpha / sqrt(w * h): small samples get a larger margin."""
    return alpha / torch.sqrt((widths * heights).clamp(min=1.0))


def focal_with_margin(logits, labels, margin=None, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss summed over labelled samples (labels 0/1; -1 skipped).

    With a margin (SML), positives are scored as sigmoid(x - m) and negatives as sigmoid(x + m):
    each sample must clear its decision boundary by m.
    """
    keep = labels >= 0
    x, y = logits[keep], labels[keep].to(logits.dtype)
    if margin is not None:
        m = margin[keep]
        x = x - m * (2 * y - 1)
    return sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="sum")


@dataclass
class DenseOutputs:
    """A detector's per-level head outputs laid out over all anchors of all levels: [B, A(, 4)],
    zeros where a level has no first step."""

    anchors: torch.Tensor  # [A, 4] cx, cy, w, h
    level: torch.Tensor  # [A] pyramid level of each anchor
    stc_mask: torch.Tensor  # [A] anchors with a first classification step
    str_mask: torch.Tensor  # [A] anchors with a first regression step
    cls1: torch.Tensor
    reg1: torch.Tensor
    cls2: torch.Tensor
    reg2: torch.Tensor


def dense_outputs(raw: dict, cfg: DetectorConfig) -> DenseOutputs:
    sizes = [a.shape[0] for a in raw["anchors"]]
    anchors = torch.cat(raw["anchors"])
    dev = anchors.device
    lvl_of = torch.cat([torch.full((n,), l, device=dev) for l, n in enumerate(sizes)])
    batch = raw["cls2"][0].shape[0]

    def full(per_level: dict, width: int | None):
        out = anchors.new_zeros((batch, anchors.shape[0]) + ((width,) if width else ()))
        start = 0
        for l, n in enumerate(sizes):
            if l in per_level:
                out[:, start:start + n] = per_level[l]
            start += n
        return out

    return DenseOutputs(
        anchors=anchors, level=lvl_of,
        stc_mask=torch.isin(lvl_of, torch.tensor(cfg.stc_levels, device=dev)),
        str_mask=torch.isin(lvl_of, torch.tensor(cfg.str_levels, device=dev)),
        cls1=full(raw["cls1"], None), reg1=full(raw["reg1"], 4),
        cls2=torch.cat(raw["cls2"], 1), reg2=torch.cat(raw["reg2"], 1))


def same_anchor_layout(a: DetectorConfig, b: DetectorConfig) -> list[str]:
    """The fields in which two detectors' outputs would mean different things (empty: none)."""
    keys = ("strides", "anchor_scales", "anchor_ratio", "center_variance", "size_variance", "stc_levels",
            "str_levels", "stc_threshold", "contract")
    return [k for k in keys if getattr(a, k) != getattr(b, k)]


def quality_focal(logits, target, beta: float = 2.0):
    """BCE towards a soft target, scaled by |p - target|^beta (Li et al., Generalized Focal Loss):
    zero where the student already agrees, so the many easy anchors do not swamp the few that matter."""
    p = torch.sigmoid(logits)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (p - target).abs().pow(beta)


class DistillationLoss(nn.Module):
    """Dense distillation from a teacher RefineFace with the same anchors and input contract.

    Every anchor's two classification steps learn the teacher's probabilities (quality focal
    loss; the second step's target is 0 where the teacher's first step rejects the anchor, as its
    deployed score is), and the boxes of anchors the teacher scores above ``min_score`` learn the
    teacher's final boxes, weighted by that score: the first step its deltas, the second step the
    teacher's box encoded on the student's own refined anchor. Each term is normalised by the
    teacher's total second-step probability, the soft count of faces. ``score_weight`` scales the
    two classification terms within the total: they are an order of magnitude smaller than the box
    terms (the focal factor vanishes where the student already agrees), yet they carry the
    teacher's calibration, which is what sets the student's false positives at a threshold.
    """

    def __init__(self, cfg: DetectorConfig, min_score: float = 0.05, beta: float = 2.0, score_weight: float = 1.0):
        super().__init__()
        if score_weight <= 0:
            raise ValueError(f"score_weight must be > 0, got {score_weight}")
        self.cfg, self.min_score, self.beta, self.score_weight = cfg, min_score, beta, score_weight

    def forward(self, raw: dict, teacher_raw: dict) -> dict:
        cfg = self.cfg
        cv, sv = cfg.center_variance, cfg.size_variance
        s, t = dense_outputs(raw, cfg), dense_outputs(teacher_raw, cfg)
        if s.cls2.shape != t.cls2.shape:
            raise ValueError(f"student and teacher outputs differ in shape: {tuple(s.cls2.shape)} vs {tuple(t.cls2.shape)}")
        stc, strm = s.stc_mask, s.str_mask
        p1, p2 = torch.sigmoid(t.cls1), torch.sigmoid(t.cls2)
        rejected = stc & ((1 - p1) > cfg.stc_threshold)
        target2 = torch.where(rejected, torch.zeros_like(p2), p2)
        norm = target2.sum().clamp(min=1.0)
        out = {
            "kd_cls1": quality_focal(s.cls1[:, stc], p1[:, stc], self.beta).sum() / norm,
            "kd_cls2": quality_focal(s.cls2, target2, self.beta).sum() / norm,
        }
        w = torch.where(target2 > self.min_score, target2, torch.zeros_like(target2))
        wsum = w.sum().clamp(min=1e-6)
        anchors = s.anchors.expand(s.cls2.shape[0], -1, -1)
        sel = strm[None, :].expand_as(w)
        t_refined = torch.where(sel[..., None], decode(t.reg1, anchors, cv, sv), anchors)
        t_box = cxcywh_to_xyxy(decode(t.reg2, t_refined, cv, sv))
        s_refined = torch.where(sel[..., None], decode(s.reg1.detach(), anchors, cv, sv), anchors)
        target_reg2 = encode(t_box, s_refined, cv, sv)
        l2 = F.smooth_l1_loss(s.reg2, target_reg2, reduction="none", beta=1 / 9).sum(-1)
        l1 = F.smooth_l1_loss(s.reg1, t.reg1, reduction="none", beta=1 / 9).sum(-1)
        w1 = w * sel
        out["kd_reg2"] = (w * l2).sum() / wsum
        out["kd_reg1"] = (w1 * l1).sum() / w1.sum().clamp(min=1e-6)
        out["kd_total"] = self.score_weight * (out["kd_cls1"] + out["kd_cls2"]) + out["kd_reg1"] + out["kd_reg2"]
        return out


class FeatureSupervision(nn.Module):
    """FSM (training only): RoIAlign 5x5 on each proposal's own pyramid level, three 3x3 convs,
    a prediction conv and global average pooling give a face/background logit."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, roi_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*layers)
        self.pred = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.constant_(self.pred.bias, -4.6)  # focal-loss prior p = 0.01
        self.roi_size = roi_size

    def forward(self, features, strides, rois_per_level):
        """rois_per_level[l]: [R_l, 5] (batch index, x1, y1, x2, y2) -> logits in the same order."""
        outs = []
        for f, s, rois in zip(features, strides, rois_per_level):
            if rois.shape[0] == 0:
                continue
            r = roi_align(f, rois, (self.roi_size, self.roi_size), spatial_scale=1.0 / s, sampling_ratio=2, aligned=True)
            outs.append(self.pred(self.tower(r)).mean(dim=(1, 2, 3)))
        return torch.cat(outs) if outs else features[0].new_zeros(0)


def level_for_size(boxes_xyxy, strides, scales) -> torch.Tensor:
    """Pyramid level whose anchors best fit a box's size (for ground truth added to FSM rois)."""
    size = torch.sqrt(((boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])).clamp(min=1))
    mean_scale = float(torch.tensor(scales).mean())
    lvl = torch.round(torch.log2(size / (strides[0] * mean_scale))).long()
    return lvl.clamp(0, len(strides) - 1)


class RefineFaceLoss(nn.Module):
    """L = L_STR + L_STC + L_FSM, with SML inside the classification losses.

    Owns the FSM head, so a detector's own parameters never include it.
    """

    def __init__(self, cfg: DetectorConfig, use_fsm: bool | None = None, use_sml: bool = True):
        super().__init__()
        self.cfg = cfg
        self.use_fsm = cfg.fsm.enabled if use_fsm is None else use_fsm
        self.use_sml = use_sml
        self.fsm = (
            FeatureSupervision(cfg.fpn_channels, cfg.fsm.channels, cfg.fsm.num_convs, cfg.fsm.roi_size)
            if self.use_fsm
            else None
        )

    def forward(self, raw: dict, targets: list[dict]) -> dict:
        cfg = self.cfg
        cv, sv = cfg.center_variance, cfg.size_variance
        levels = range(len(raw["anchors"]))
        d = dense_outputs(raw, cfg)
        anchors, lvl_of, stc_mask, str_mask = d.anchors, d.level, d.stc_mask, d.str_mask
        cls1, reg1, cls2, reg2 = d.cls1, d.reg1, d.cls2, d.reg2

        sums = {k: anchors.new_zeros(()) for k in ("stc1", "stc2", "str1", "str2", "fsm")}
        npos = {k: 0 for k in ("stc1", "stc2", "str1", "str2", "fsm")}
        fsm_rois = [[] for _ in levels]
        fsm_labels = [[] for _ in levels]
        anchors_xyxy = cxcywh_to_xyxy(anchors)
        for b, t in enumerate(targets):
            gt, ign = t["boxes"], t.get("ignore", torch.zeros(len(t["boxes"]), dtype=torch.bool, device=anchors.device))
            # first step: IoU 0.3 / 0.7 on the preset anchors
            lab1, m1 = match_anchors(anchors_xyxy, gt, ign, 0.3, 0.7)
            margin1 = self._margin(anchors)
            l1 = torch.where(stc_mask, lab1, torch.full_like(lab1, IGNORE))
            sums["stc1"] = sums["stc1"] + focal_with_margin(cls1[b], l1, margin1, cfg.focal_alpha, cfg.focal_gamma)
            npos["stc1"] += int((l1 == POS).sum())
            pos_r1 = (lab1 == POS) & str_mask
            if pos_r1.any():
                tgt = encode(gt[m1[pos_r1]], anchors[pos_r1], cv, sv)
                sums["str1"] = sums["str1"] + F.smooth_l1_loss(reg1[b][pos_r1], tgt, reduction="sum", beta=1 / 9)
                npos["str1"] += int(pos_r1.sum())
            # second step: STR levels regress from the refined anchors (not back-propagated into
            # the first step through the anchors), IoU 0.4 / 0.5
            refined = torch.where(str_mask[:, None], decode(reg1[b].detach(), anchors, cv, sv), anchors)
            lab2, m2 = match_anchors(cxcywh_to_xyxy(refined), gt, ign, 0.4, 0.5)
            # STC: the second step only sees anchors the first step did not reject
            rejected = stc_mask & ((1 - torch.sigmoid(cls1[b].detach())) > cfg.stc_threshold)
            lab2 = torch.where(rejected, torch.full_like(lab2, IGNORE), lab2)
            sums["stc2"] = sums["stc2"] + focal_with_margin(cls2[b], lab2, self._margin(refined), cfg.focal_alpha, cfg.focal_gamma)
            npos["stc2"] += int((lab2 == POS).sum())
            pos2 = lab2 == POS
            if pos2.any():
                tgt = encode(gt[m2[pos2]], refined[pos2], cv, sv)
                sums["str2"] = sums["str2"] + F.smooth_l1_loss(reg2[b][pos2], tgt, reduction="sum", beta=1 / 9)
                npos["str2"] += int(pos2.sum())
            if self.fsm is not None:
                self._fsm_samples(b, refined, reg2[b].detach(), cls2[b].detach(), lvl_of, gt, ign, fsm_rois, fsm_labels)

        if self.fsm is not None:
            rois = [torch.cat(r) if r else anchors.new_zeros((0, 5)) for r in fsm_rois]
            labels = torch.cat([torch.cat(x) for x in fsm_labels if x]) if any(fsm_labels) else anchors.new_zeros(0)
            logits = self.fsm(raw["features"], cfg.strides, rois)
            if logits.numel():
                sums["fsm"] = cfg.fsm.loss_weight * focal_with_margin(logits, labels.long(), None, cfg.focal_alpha, cfg.focal_gamma)
                npos["fsm"] = int((labels == POS).sum())
        losses = {k: sums[k] / max(1, npos[k]) for k in sums}
        losses["total"] = losses["str1"] + losses["str2"] + losses["stc1"] + losses["stc2"] + losses["fsm"]
        return losses

    def _margin(self, anchors_cxcywh):
        if not self.use_sml:
            return None
        return scale_aware_margin(anchors_cxcywh[:, 2], anchors_cxcywh[:, 3], self.cfg.sml_alpha)

    def _fsm_samples(self, b, refined, reg2, cls2, lvl_of, gt, ign, rois_out, labels_out):
        cfg = self.cfg
        boxes = cxcywh_to_xyxy(decode(reg2, refined, cfg.center_variance, cfg.size_variance))
        scores = torch.sigmoid(cls2)
        # proposals: NMS 0.7 over the top-scoring predictions, the best 512 kept, plus ground truth
        pre = torch.topk(scores, min(len(scores), 4 * cfg.fsm.num_proposals)).indices
        keep = pre[nms(boxes[pre], scores[pre], cfg.fsm.proposal_nms)][: cfg.fsm.num_proposals]
        props, lv = boxes[keep], lvl_of[keep]
        valid_gt = gt[~ign]
        if len(valid_gt):
            props = torch.cat([props, valid_gt])
            lv = torch.cat([lv, level_for_size(valid_gt, cfg.strides, cfg.anchor_scales).to(lv.device)])
        labels = torch.zeros(len(props), dtype=torch.long, device=props.device)
        if len(gt):
            iou = box_iou(props, gt)
            best_valid = iou.masked_fill(ign[None, :], 0).max(dim=1).values
            labels[(best_valid >= cfg.fsm.neg_iou) & (best_valid < cfg.fsm.pos_iou)] = IGNORE
            labels[best_valid >= cfg.fsm.pos_iou] = POS
            if ign.any():
                labels[(iou[:, ign].max(dim=1).values >= cfg.fsm.neg_iou) & (labels == 0)] = IGNORE
        for l in range(len(cfg.strides)):
            sel = (lv == l) & (labels >= 0)
            if sel.any():
                p = props[sel]
                rois_out[l].append(torch.cat([p.new_full((len(p), 1), float(b)), p], 1))
                labels_out[l].append(labels[sel].to(p.dtype))


def ranking_loss(refined, oracle, valid, pairs: int = 10, sigma: float = 20.0, eps: float = 1e-3):
    """CRFace pairwise ranking loss (RankNet form) over candidates sorted by detector score.

    For each offset k = 1..pairs the pairs (i, i + k) are compared; a pair whose oracle confidences
    (IoU with the closest ground truth) differ by more than eps contributes
    log(1 + exp(-sigma * sign * (c'_i - c'_{i+k}))), sign = +1 when i should rank above i + k.
    Ties carry no order and are skipped. Each offset's mean is averaged over the offsets, as the
    paper divides the n-pair loss by n. (The paper's equation 2 is garbled; this is its intent: a
    sigmoid cross-entropy on the difference of the predicted confidences.)
    """
    total = refined.new_zeros(())
    used = 0
    for k in range(1, pairs + 1):
        if refined.shape[1] <= k:
            break
        d_pred = refined[:, :-k] - refined[:, k:]
        d_gt = oracle[:, :-k] - oracle[:, k:]
        mask = valid[:, :-k] & valid[:, k:] & (d_gt.abs() > eps)
        if mask.any():
            sign = torch.sign(d_gt[mask])
            total = total + F.softplus(-sigma * sign * d_pred[mask]).mean()
            used += 1
    return total / max(1, used)


def outside_unit_penalty(refined, valid):
    """Mean distance of the valid unclipped refined scores from [0, 1]: pulls them back where the
    output clip leaves their order intact, with a gradient (the clip itself has none)."""
    out = F.relu(refined - 1.0) + F.relu(-refined)
    return out[valid].mean() if valid.any() else refined.new_zeros(())


def calibration_loss(raw, oracle, valid, iou: float = 0.5):
    """Binary cross-entropy of the refined score (clamped into (0, 1)) against "this candidate
    matches a face at IoU >= ``iou``", over the valid rows. The ranking loss fixes only the order
    of neighbours, so refined scores drift and the detector's output threshold stops meaning
    anything; this term keeps the ranker's output a face probability, one scale for every
    detector it re-scores."""
    if not valid.any():
        return raw.new_zeros(())
    # written out in float32: F.binary_cross_entropy refuses to run under CUDA autocast
    p = raw[valid].float().clamp(1e-4, 1.0 - 1e-4)
    t = (oracle[valid] >= iou).float()
    return -(t * p.log() + (1.0 - t) * (1.0 - p).log()).mean()


def ranker_loss(raw, oracle, valid, pairs: int = 10, sigma: float = 20.0, calib_weight: float = 0.0) -> dict:
    """The ranker's training objective on its unclipped output (``CRFace(..., clip=False)``): the
    ranking loss plus the range penalty. On clipped scores, rows pushed past 0 or 1 tie with their
    clipped neighbours and get no gradient, and once all are there the loss is exactly ln 2 for
    good (pre-NMS candidates crowd the score floor, one small negative residual from 0).
    The penalty is weighted by ``sigma``: a row 0.05 outside the range is pulled back about as
    hard as a pair 0.05 apart is pushed. ``calib_weight``: the weight of
    :func:`calibration_loss` (0: the paper's objective alone)."""
    rank = ranking_loss(raw, oracle, valid, pairs=pairs, sigma=sigma)
    rng = sigma * outside_unit_penalty(raw, valid)
    if calib_weight > 0:
        cal = calib_weight * calibration_loss(raw, oracle, valid)
        return {"total": rank + rng + cal, "rank": rank, "range": rng, "calibration": cal}
    return {"total": rank + rng, "rank": rank, "range": rng}


def oracle_confidence(boxes_xyxy, gt_xyxy):
    """IoU of each predicted box with its closest ground-truth box (0 when there is none)."""
    if gt_xyxy.numel() == 0:
        return boxes_xyxy.new_zeros(boxes_xyxy.shape[0])
    return box_iou(boxes_xyxy, gt_xyxy).max(dim=1).values
