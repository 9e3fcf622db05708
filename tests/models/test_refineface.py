import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rfdeploy.models import build, detector_config
from rfdeploy.models.anchors import anchor_shapes, decode, encode, level_anchors, xyxy_to_cxcywh
from rfdeploy.models.config import TENSORRT_MAX_TOPK
from rfdeploy.models.refineface import RFE, RefineFace, select_candidates


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


def test_rfe_branches_have_rectangular_receptive_fields():
    # paper Fig. 7: the four branches see 1x3, 3x1, 1x5 and 5x1 fields (not k x k squares)
    rfe = RFE(8)
    for p in rfe.parameters():
        torch.nn.init.constant_(p, 0.1) if p.dim() > 1 else torch.nn.init.zeros_(p)
    x = torch.zeros(1, 8, 11, 11)
    x[..., 5, 5] = 1.0  # an impulse
    extents = []
    with torch.no_grad():
        for y in rfe.branch_outputs(x):
            nz = y[0].abs().sum(0).nonzero()
            extents.append((int(nz[:, 0].max() - nz[:, 0].min() + 1), int(nz[:, 1].max() - nz[:, 1].min() + 1)))
    assert sorted(extents) == sorted([(1, 3), (3, 1), (1, 5), (5, 1)])


def test_rfe_replaces_middle_convs(tiny_det_cfg):
    m = RefineFace(tiny_det_cfg)
    kinds = [type(x).__name__ for x in m.cls_head.tower]
    assert kinds.count("RFE") == 2 and kinds[0] == "Conv2d" and kinds[-2] == "Conv2d"


def test_candidate_selection_pads_small_sets():
    # fewer anchors than K: padded entries have score 0
    boxes = [torch.rand(1, 3, 4)]
    scores = [torch.tensor([[0.3, 0.9, 0.1]])]
    b, s = select_candidates(boxes, scores, 5)
    assert s[0].tolist() == pytest.approx([0.9, 0.3, 0.1, 0.0, 0.0])
    assert torch.equal(b[0, 0], boxes[0][0, 1])


def test_candidate_selection_is_an_exact_global_topk_above_the_tensorrt_limit():
    # six levels sized like a 640x640 input; the high levels hold far more strong candidates
    # than an anchor-count quota would give them (P5-P7 would keep 58/14/3 of 5000)
    g = torch.Generator().manual_seed(0)
    sizes = [51200, 12800, 3200, 800, 200, 50]
    # distinct scores (ties would make the reference order ambiguous)
    ranks = torch.stack([torch.randperm(sum(sizes), generator=g) for _ in range(2)]).float() / sum(sizes)
    scores = list(ranks.split(sizes, dim=1))
    scores = [x + (0.0 if l < 3 else 1.0) for l, x in enumerate(scores)]
    boxes = [torch.rand(2, n, 4, generator=g) for n in sizes]
    k = 5000
    assert k > TENSORRT_MAX_TOPK
    b, s = select_candidates(boxes, scores, k)
    all_s, all_b = torch.cat(scores, 1), torch.cat(boxes, 1)
    ref_s, ref_i = torch.topk(all_s, k, dim=1)
    assert torch.equal(s, ref_s)  # same scores, same (descending) order
    for i in range(2):
        assert torch.equal(b[i], all_b[i, ref_i[i]])
    high = sum(sizes[:3])
    assert (ref_i >= high).sum(1).min() > 58 + 14 + 3  # the case the old quotas lost


def test_large_candidate_sets_run_end_to_end():
    cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=5000)
    m = build(cfg).eval()
    with torch.no_grad():
        b, s = m(torch.randn(1, 3, 64, 64))
    assert b.shape == (1, 5000, 4) and s.shape == (1, 5000)
    assert (s[0, :-1] >= s[0, 1:]).all()


def test_repeated_input_shape_builds_no_tensor_from_host_data(tiny_det_cfg, monkeypatch):
    # CUDA-graph capture forbids host-to-device copies: after one forward of a shape, a second
    # forward of that shape must not build tensors from Python data (anchors are cached)
    m = build(tiny_det_cfg).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = m(x)

        def refuse(*a, **k):
            raise AssertionError("tensor built from host data during a repeated forward")

        for name in ("tensor", "as_tensor", "from_numpy"):
            monkeypatch.setattr(torch, name, refuse)
        again = m(x)
    assert torch.equal(ref[0], again[0]) and torch.equal(ref[1], again[1])


def test_fp16_network_decodes_and_filters_in_fp32(tiny_det_cfg):
    m = RefineFace(tiny_det_cfg)
    # first-step face probabilities a hair on either side of the STC boundary 1 - p > 0.99
    p1 = torch.tensor([0.0099, 0.0101, 0.00995, 0.01005, 0.5, 0.0098, 0.0102, 0.2])
    raw32 = _fake_raw(tiny_det_cfg, torch.logit(p1.double()).float())
    raw16 = {
        "anchors": raw32["anchors"],
        "cls1": {l: v.half() for l, v in raw32["cls1"].items()},
        "reg1": {l: v.half() for l, v in raw32["reg1"].items()},
        "cls2": [v.half() for v in raw32["cls2"]],
        "reg2": [v.half() for v in raw32["reg2"]],
    }
    b32, s32 = m.decode_levels(raw32)
    b16, s16 = m.decode_levels(raw16)
    for l in tiny_det_cfg.stc_levels:
        assert s16[l].dtype == torch.float32
        dropped16 = s16[l][0] == 0
        # fp16 logits carry ~1e-3 relative error; only the clear cases must agree, and the
        # decision itself is taken in fp32 (an fp16 compare against 0.99 rounds it to 0.99023)
        clear = ((1 - p1) - 0.99).abs() > 2e-4
        assert torch.equal(dropped16[clear], (s32[l][0] == 0)[clear])
    half_model = RefineFace(tiny_det_cfg).half()
    assert half_model.anchor_wh0.dtype == torch.float32  # anchor sizes stay exact
    for b in b16:
        assert b.dtype == torch.float32


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


def test_configs_stored_before_the_paper_rfe_load_with_the_stacked_layout():
    from rfdeploy.models.config import DetectorConfig

    legacy = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16).to_dict()
    for k in ("rfe_layout", "separable"):
        legacy.pop(k)
    cfg = DetectorConfig.from_dict(legacy)
    assert cfg.rfe_layout == "stacked"
    from rfdeploy.models.refineface import StackedRFE

    rfe = next(m for m in RefineFace(cfg).cls_head.tower if isinstance(m, StackedRFE))
    assert len(rfe.branches[0]) == 6  # 1x1, 1xk, kx1 (+ ReLUs): the earlier layout
    new = detector_config("refineface_mnet025").to_dict()
    new.pop("rfe_layout")
    assert DetectorConfig.from_dict(new).rfe_layout == "paper"


def test_forward_decodes_only_the_selected_anchors_with_the_same_result(tiny_det_cfg):
    # forward selects first and decodes K rows; decode_levels + select_candidates decodes all
    torch.manual_seed(0)
    m = build(tiny_det_cfg).eval()
    x = torch.rand(2, 3, 96, 160) * 255
    with torch.no_grad():
        b, s = m(x)
        rb, rs = select_candidates(*m.decode_levels(m.forward_raw(x)), tiny_det_cfg.candidates)
    assert torch.equal(s, rs)
    assert torch.allclose(b, rb, atol=1e-4)


@pytest.mark.parametrize("hw", [(96, 128), (97, 255)])
def test_anchors_from_indices_equal_the_anchor_grids(tiny_det_cfg, hw):
    # forward builds anchors only for the selected indices; every index (padding included) must
    # give exactly what the full grids (level_anchors, used by training and decode_levels) hold
    m = build(tiny_det_cfg).eval()
    with torch.no_grad():
        raw = m.forward_raw(torch.zeros(1, 3, *hw))
    grids = torch.cat(raw["anchors"])
    pad = 7
    idx = torch.arange(grids.shape[0] + pad).unsqueeze(0)
    anchors, level = m._anchors_at(idx, raw["features"])
    assert torch.equal(anchors[0, :grids.shape[0]], grids)
    assert torch.equal(anchors[0, grids.shape[0]:], torch.zeros(pad, 4))
    sizes = torch.tensor([a.shape[0] for a in raw["anchors"]])
    assert torch.equal(level[0], torch.repeat_interleave(torch.arange(len(sizes) + 1), torch.cat([sizes, torch.tensor([pad])])))


def test_stc_levels_share_one_classification_call_per_level(tiny_det_cfg):
    # the two STC steps run the shared classifier once on both maps stacked in the batch: the
    # result must equal two separate calls
    m = build(tiny_det_cfg).eval()
    x = torch.rand(2, 3, 96, 128) * 255
    with torch.no_grad():
        raw = m.forward_raw(x)
        first, second = m.fpn(m.backbone(x))
        for l in tiny_det_cfg.stc_levels:
            assert torch.allclose(raw["cls1"][l], m.cls_head(first[l])[..., 0], atol=1e-5)
            assert torch.allclose(raw["cls2"][l], m.cls_head(second[l])[..., 0], atol=1e-5)


@pytest.mark.parametrize("channels", [8, 16, 32])
def test_rfe_paired_forward_equals_the_four_branch_layout(channels):
    # an export runs the branches as two grouped convs; it must be the paper's arithmetic
    torch.manual_seed(channels)
    rfe = RFE(channels)
    for p in rfe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, channels, 13, 10)
    with torch.no_grad():
        paired = F.conv2d(torch.cat(rfe._paired(x), dim=1), rfe.fuse.weight[:, rfe._order], rfe.fuse.bias)
        assert torch.allclose(F.relu(x + paired), rfe.reference_forward(x), atol=1e-5)
        assert torch.equal(rfe(x), rfe.reference_forward(x))  # eager: the plain layout
    # gradients reach the stored per-branch parameters
    rfe(x).sum().backward()
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0 for conv in rfe.rect)


def test_rfe_export_has_two_rectangular_convs_and_matches_eager():
    import io

    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    rfe = RFE(16).eval()
    x = torch.randn(1, 16, 9, 7)
    buf = io.BytesIO()
    torch.onnx.export(rfe, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], do_constant_folding=True)
    convs = [n for n in onnx.load_from_string(buf.getvalue()).graph.node if n.op_type == "Conv"]
    assert len(convs) == 4  # reduce, 1x5 pair, 5x1 pair, fuse (the plain layout has 6)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], rfe(x).numpy(), atol=1e-5)


def test_shared_tower_runs_one_tower_per_map_and_each_predictor_on_it():
    # shared_tower: the classifier and both regressors read one tower's output; the result must
    # equal running that tower on each map and each predictor on its output
    cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=300, shared_tower=True)
    torch.manual_seed(0)
    m = build(cfg).eval()
    assert m.tower is not None and len(m.cls_head.tower) == 0 and len(m.box_head_first.tower) == 0
    x = torch.rand(2, 3, 96, 128) * 255
    with torch.no_grad():
        raw = m.forward_raw(x)
        first, second = m.fpn(m.backbone(x))
        for l, p in enumerate(second):
            t = m.tower(p)
            assert torch.allclose(raw["cls2"][l], m.cls_head.pred(t).permute(0, 2, 3, 1).reshape(2, -1), atol=1e-5)
            assert torch.allclose(raw["reg2"][l], m.box_head(t), atol=1e-5)
            if l in cfg.stc_levels:
                assert torch.allclose(raw["cls1"][l], m.cls_head(m.tower(first[l]))[..., 0], atol=1e-5)
            if l in cfg.str_levels:
                assert torch.allclose(raw["reg1"][l], m.box_head_first(m.tower(first[l])), atol=1e-5)
        b, s = m(x)
    assert b.shape == (2, 300, 4) and torch.isfinite(b).all()


def test_lite_preset_has_a_third_of_the_head_towers():
    from rfdeploy.models.refineface import RFE

    def rfes(model):
        return sum(isinstance(mod, RFE) for mod in model.modules())

    assert rfes(build(detector_config("refineface_mnet025"))) == 3  # one per subnet
    lite = build(detector_config("refineface_mnet025_lite"))
    assert rfes(lite) == 1 and lite.cfg.fpn_channels == 16
