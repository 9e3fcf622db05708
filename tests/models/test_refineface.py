import math

import pytest
import torch

from rfdeploy.models import build, detector_config
from rfdeploy.models.anchors import anchor_shapes, decode, encode, level_anchors, xyxy_to_cxcywh
from rfdeploy.models.config import TENSORRT_MAX_TOPK
from rfdeploy.models.refineface import RFE, RefineFace, level_quotas, select_candidates


@pytest.mark.parametrize("hw", [(128, 128), (100, 130), (97, 255)])
def test_output_shapes_any_size(tiny_det_cfg, hw):
    m = build(tiny_det_cfg).eval()
    with torch.no_grad():
        boxes, scores = m(torch.randn(2, 3, *hw))
    assert boxes.shape == (2, tiny_det_cfg.candidates, 4)
    assert scores.shape == (2, tiny_det_cfg.candidates)
    assert torch.isfinite(boxes).all() and (scores >= 0).all() and (scores <= 1).all()
    raw = m.forward_raw(torch.randn(1, 3, *hw))
    for a, s, f in zip(raw["anchors"], tiny_det_cfg.strides, raw["features"]):
        assert a.shape[0] == f.shape[-2] * f.shape[-1] * 2
        assert f.shape[-2] == math.ceil(hw[0] / s) or f.shape[-2] == -(-hw[0] // s)


def test_anchor_count_and_scale_range():
    cfg = detector_config("refineface_r18")
    sizes = []
    for s in cfg.strides:
        for w, h in anchor_shapes(s, cfg.anchor_scales, cfg.anchor_ratio):
            assert h / w == pytest.approx(1.25)
            sizes.append(math.sqrt(w * h))
    assert min(sizes) == pytest.approx(8.0)
    assert max(sizes) == pytest.approx(2 * math.sqrt(2) * 128, rel=1e-6)  # 362 px
    a = level_anchors(3, 5, 16, cfg.anchor_scales, cfg.anchor_ratio)
    assert a.shape == (3 * 5 * 2, 4)
    assert a[0, :2].tolist() == [8.0, 8.0] and a[2, :2].tolist() == [24.0, 8.0]


def test_box_coding_roundtrip():
    anchors = torch.tensor([[50.0, 60.0, 20.0, 25.0], [10.0, 10.0, 8.0, 10.0]])
    gt = torch.tensor([[40.0, 45.0, 62.0, 80.0], [5.0, 6.0, 16.0, 14.0]])
    back = decode(encode(gt, anchors, 0.1, 0.2), anchors, 0.1, 0.2)
    assert torch.allclose(back, xyxy_to_cxcywh(gt), atol=1e-4)


def _fake_raw(cfg, cls1_logit, cls2_logit=2.0):
    # one 2x2 map per level, hand-built logits; zero regressions
    anchors = [level_anchors(2, 2, s, cfg.anchor_scales, cfg.anchor_ratio) for s in cfg.strides]
    n = anchors[0].shape[0]
    return {
        "anchors": anchors,
        "cls1": {l: cls1_logit.clone().view(1, n) for l in cfg.stc_levels},
        "reg1": {l: torch.zeros(1, n, 4) for l in cfg.str_levels},
        "cls2": [torch.full((1, n), cls2_logit) for _ in cfg.strides],
        "reg2": [torch.zeros(1, n, 4) for _ in cfg.strides],
    }


def test_stc_drops_exactly_the_confident_negatives(tiny_det_cfg):
    m = RefineFace(tiny_det_cfg)
    # first-step face probabilities around the 0.01 boundary (negative confidence 0.99)
    p1 = torch.tensor([0.005, 0.0099, 0.0101, 0.5, 0.9, 0.001, 0.02, 0.011])
    raw = _fake_raw(tiny_det_cfg, torch.logit(p1))
    _, scores = m.decode_levels(raw)
    dropped = (1 - p1) > 0.99
    for l in tiny_det_cfg.stc_levels:
        assert torch.equal(scores[l][0] == 0, dropped)
    for l in tiny_det_cfg.str_levels:  # no STC there
        assert (scores[l] > 0).all()


def test_str_refines_anchors_before_decoding(tiny_det_cfg):
    m = RefineFace(tiny_det_cfg)
    raw = _fake_raw(tiny_det_cfg, torch.zeros(8))
    shift = torch.tensor([1.0, 0.0, 0.0, 0.0])  # first step moves anchors right by 0.1 * w
    for l in tiny_det_cfg.str_levels:
        raw["reg1"][l] = shift.expand(1, 8, 4).clone()
    raw["reg2"] = [shift.expand(1, 8, 4).clone() for _ in tiny_det_cfg.strides]
    boxes, _ = m.decode_levels(raw)
    for l, s in enumerate(tiny_det_cfg.strides):
        a = raw["anchors"][l]
        cx = (boxes[l][0, :, 0] + boxes[l][0, :, 2]) / 2
        steps = 2 if l in tiny_det_cfg.str_levels else 1
        assert torch.allclose(cx, a[:, 0] + steps * 0.1 * a[:, 2], atol=1e-3)


def test_rfe_shapes_and_shortcut():
    rfe = RFE(16)
    x = torch.randn(1, 16, 9, 7)
    assert rfe(x).shape == x.shape
    for p in rfe.fuse.parameters():
        torch.nn.init.zeros_(p)
    assert torch.allclose(rfe(x), torch.relu(x))  # shortcut keeps the original field


def test_rfe_replaces_middle_convs(tiny_det_cfg):
    m = RefineFace(tiny_det_cfg)
    kinds = [type(x).__name__ for x in m.cls_head.tower]
    assert kinds.count("RFE") == 2 and kinds[0] == "Conv2d" and kinds[-2] == "Conv2d"


def test_candidate_selection_respects_tensorrt_topk_limit():
    q = level_quotas(5000, 6)
    assert sum(q) == 5000 and max(q) <= TENSORRT_MAX_TOPK
    assert level_quotas(1000, 6) == [1000]
    # fewer anchors than K: padded entries have score 0
    boxes = [torch.rand(1, 3, 4)]
    scores = [torch.tensor([[0.3, 0.9, 0.1]])]
    b, s = select_candidates(boxes, scores, 5)
    assert s[0].tolist() == pytest.approx([0.9, 0.3, 0.1, 0.0, 0.0])
    assert torch.equal(b[0, 0], boxes[0][0, 1])


def test_large_candidate_sets_are_split_per_level():
    cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=5000)
    m = build(cfg).eval()
    with torch.no_grad():
        b, s = m(torch.randn(1, 3, 64, 64))
    assert b.shape == (1, 5000, 4) and s.shape == (1, 5000)


@pytest.mark.parametrize("name", ["refineface_r18", "refineface_r50", "refineface_r101", "refineface_r152", "refineface_mbv2"])
def test_all_presets_build(name):
    m = build(detector_config(name, fpn_channels=16, head_channels=16, candidates=50)).eval()
    with torch.no_grad():
        b, s = m(torch.randn(1, 3, 64, 64))
    assert b.shape == (1, 50, 4)


def test_mobilenet_imagenet_weights_load(shared_data):
    m = build(detector_config("refineface_mbv2"))
    before = m.backbone.net.features[1].conv[0][0].weight.clone()
    m.backbone.load_imagenet(shared_data / "models" / "mobilenet_v2_imagenet.pth")
    assert not torch.equal(before, m.backbone.net.features[1].conv[0][0].weight)
