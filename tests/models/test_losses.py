import pytest
import torch

from rfdeploy.models import build
from rfdeploy.models.losses import (
    IGNORE,
    POS,
    RefineFaceLoss,
    focal_with_margin,
    match_anchors,
    oracle_confidence,
    ranking_loss,
    scale_aware_margin,
)


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 48.0], [40.0, 20.0, 90.0, 85.0]]), "ignore": torch.tensor([False, False])},
        {"boxes": torch.tensor([[8.0, 0.0, 88.0, 96.0]]), "ignore": torch.tensor([False])}  # P5-sized: STR positives,
    ]


def _loss(cfg, use_fsm, use_sml, seed=0):
    torch.manual_seed(seed)
    model = build(cfg).train()
    crit = RefineFaceLoss(cfg, use_fsm=use_fsm, use_sml=use_sml)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 96, 96)
    return crit(model.forward_raw(x), _targets())


def test_total_is_sum_of_parts_and_backprops(tiny_det_cfg):
    model = build(tiny_det_cfg).train()
    crit = RefineFaceLoss(tiny_det_cfg)
    losses = crit(model.forward_raw(torch.randn(2, 3, 96, 96)), _targets())
    parts = sum(losses[k] for k in ("stc1", "stc2", "str1", "str2", "fsm"))
    assert torch.allclose(losses["total"], parts)
    assert all(losses[k] > 0 for k in ("stc1", "stc2", "str1", "str2", "fsm"))
    losses["total"].backward()
    assert crit.fsm.pred.weight.grad is not None and crit.fsm.pred.weight.grad.abs().sum() > 0
    assert model.backbone.net.features[0][0].weight.grad.abs().sum() > 0


def test_fsm_and_sml_change_the_training_loss(tiny_det_cfg):
    base = _loss(tiny_det_cfg, use_fsm=False, use_sml=False)
    with_fsm = _loss(tiny_det_cfg, use_fsm=True, use_sml=False)
    with_sml = _loss(tiny_det_cfg, use_fsm=False, use_sml=True)
    assert base["fsm"] == 0 and with_fsm["fsm"] > 0
    assert with_fsm["total"] > base["total"]
    assert not torch.isclose(with_sml["stc2"], base["stc2"])
    # SML touches classification only
    assert torch.isclose(with_sml["str2"], base["str2"])


def test_fsm_and_sml_absent_from_inference_path(tiny_det_cfg):
    model = build(tiny_det_cfg).eval()
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    assert not any("fsm" in n or "loss" in n for n in names)
    assert not any("margin" in n for n in names)


def test_sml_gives_small_positives_a_larger_loss():
    m_small = scale_aware_margin(torch.tensor([10.0]), torch.tensor([12.0]), 15.0)
    m_large = scale_aware_margin(torch.tensor([200.0]), torch.tensor([250.0]), 15.0)
    assert m_small > m_large
    logit = torch.tensor([1.0])
    pos = torch.tensor([POS])
    small = focal_with_margin(logit, pos, m_small)
    large = focal_with_margin(logit, pos, m_large)
    plain = focal_with_margin(logit, pos, None)
    assert small > large > plain


def test_matching_thresholds_and_ignore():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 14], [0, 0, 10, 30], [50, 50, 60, 60], [100, 100, 110, 110]])
    gt = torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]])
    labels, matched = match_anchors(anchors, gt, torch.tensor([False, True]), 0.3, 0.7)
    assert labels[0] == POS and matched[0] == 0
    assert labels[1] == POS  # IoU 0.714
    assert labels[2] == IGNORE or labels[2] == 0  # IoU 0.33: between thresholds -> ignored
    assert labels[2] == IGNORE
    assert labels[3] == 0
    assert labels[4] == IGNORE  # overlaps an ignore-flagged face


def test_ranking_loss_order():
    oracle = torch.tensor([[0.9, 0.7, 0.5, 0.3, 0.0]])
    valid = torch.ones_like(oracle, dtype=torch.bool)
    right = torch.tensor([[0.95, 0.7, 0.45, 0.2, 0.0]])
    wrong = right.flip(1)
    assert ranking_loss(right, oracle, valid) < 1e-2
    assert ranking_loss(wrong, oracle, valid) > 5.0
    # ties in the oracle carry no order
    tied = torch.zeros(1, 5)
    assert ranking_loss(torch.rand(1, 5), tied, valid) == 0


def test_oracle_confidence():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 10], [50, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    assert oracle_confidence(boxes, gt).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert oracle_confidence(boxes, torch.zeros(0, 4)).tolist() == [0, 0, 0]


def test_calibration_term_pulls_refined_scores_towards_face_probability():
    """Rows matching a face at IoU >= 0.5 are pulled up, others down; invalid rows are ignored;
    weight 0 is the paper's objective unchanged."""
    from rfdeploy.models.losses import calibration_loss, ranker_loss

    raw = torch.tensor([[0.3, 0.6, 0.4, 0.9]], requires_grad=True)
    oracle = torch.tensor([[0.8, 0.1, 0.5, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    loss = calibration_loss(raw, oracle, valid)
    loss.backward()
    g = raw.grad[0]
    assert g[0] < 0 and g[2] < 0  # faces (IoU 0.8, 0.5): raise
    assert g[1] > 0  # background: lower
    assert g[3] == 0  # padding
    plain = ranker_loss(raw.detach(), oracle, valid)
    with_cal = ranker_loss(raw.detach(), oracle, valid, calib_weight=2.0)
    assert "calibration" not in plain
    assert torch.allclose(with_cal["total"], plain["total"] + 2.0 * calibration_loss(raw.detach(), oracle, valid))
    assert calibration_loss(raw, oracle, torch.zeros_like(valid)) == 0


def test_calibration_term_is_plain_cross_entropy_and_runs_under_autocast():
    """Written out by hand (F.binary_cross_entropy is refused under CUDA autocast, where ranker
    training runs its loss): the same value as the library's, also inside an autocast block."""
    import torch.nn.functional as F

    from rfdeploy.models.losses import calibration_loss

    raw = torch.tensor([[0.3, 0.6, 0.4, 1.2, -0.1]])
    oracle = torch.tensor([[0.8, 0.1, 0.5, 0.0, 0.7]])
    valid = torch.ones_like(raw, dtype=torch.bool)
    want = F.binary_cross_entropy(raw.clamp(1e-4, 1 - 1e-4), (oracle >= 0.5).float())
    assert torch.allclose(calibration_loss(raw, oracle, valid), want, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = calibration_loss(raw.bfloat16(), oracle, valid)
    assert got.dtype == torch.float32 and torch.isfinite(got)


def _teacher_outputs(cfg):
    """(input, raw outputs) of a teacher that scores a real share of anchors above the
    box-distillation floor."""
    torch.manual_seed(0)
    teacher = build(cfg).eval()
    x = torch.rand(2, 3, 96, 128) * 255
    with torch.no_grad():
        teacher.cls_head.pred.bias.fill_(0.0)
        return x, teacher.forward_raw(x)


def test_distillation_is_zero_when_the_student_is_the_teacher(tiny_det_cfg):
    from rfdeploy.models.losses import DistillationLoss

    _, raw = _teacher_outputs(tiny_det_cfg)
    with torch.no_grad():
        kd = DistillationLoss(tiny_det_cfg)(raw, raw)
        assert float(torch.sigmoid(torch.cat(raw["cls2"], 1)).max()) > 0.05
    for k in ("kd_cls1", "kd_cls2", "kd_reg1", "kd_reg2", "kd_total"):
        assert float(kd[k]) < 1e-5, (k, float(kd[k]))


def test_distillation_pulls_a_different_student_towards_the_teacher(tiny_det_cfg):
    from dataclasses import replace

    from rfdeploy.models.losses import DistillationLoss

    x, t_raw = _teacher_outputs(tiny_det_cfg)
    student_cfg = replace(tiny_det_cfg, fpn_channels=16, head_channels=16, shared_tower=True)
    torch.manual_seed(1)
    student = build(student_cfg).train()
    crit = DistillationLoss(student_cfg)
    first = {k: v.detach() for k, v in crit(student.forward_raw(x), t_raw).items()}
    assert all(float(first[k]) > 0 for k in ("kd_cls1", "kd_cls2", "kd_reg1", "kd_reg2"))
    opt = torch.optim.Adam([p for n, p in student.named_parameters() if not n.startswith("backbone")], lr=3e-3)
    for _ in range(30):
        kd = crit(student.forward_raw(x), t_raw)
        opt.zero_grad()
        kd["kd_total"].backward()
        opt.step()
    with torch.no_grad():
        last = crit(student.forward_raw(x), t_raw)
    assert float(last["kd_total"]) < 0.5 * float(first["kd_total"])


def test_distillation_score_weight_scales_only_the_score_terms(tiny_det_cfg):
    from dataclasses import replace

    from rfdeploy.models.losses import DistillationLoss

    x, t_raw = _teacher_outputs(tiny_det_cfg)
    student_cfg = replace(tiny_det_cfg, fpn_channels=16, head_channels=16, shared_tower=True)
    torch.manual_seed(1)
    raw = build(student_cfg).train().forward_raw(x)
    one, ten = (DistillationLoss(student_cfg, score_weight=w)(raw, t_raw) for w in (1.0, 10.0))
    for k in ("kd_cls1", "kd_cls2", "kd_reg1", "kd_reg2"):
        assert torch.equal(one[k], ten[k])
    scores, boxes = one["kd_cls1"] + one["kd_cls2"], one["kd_reg1"] + one["kd_reg2"]
    assert float(scores) > 0 and float(boxes) > 0
    assert torch.allclose(ten["kd_total"], 10 * scores + boxes) and torch.allclose(one["kd_total"], scores + boxes)
    with pytest.raises(ValueError, match="score_weight"):
        DistillationLoss(student_cfg, score_weight=0.0)


def test_distillation_targets_zero_where_the_teachers_first_step_rejects(tiny_det_cfg):
    # the teacher's deployed score is 0 on anchors its STC first step rejects, whatever its
    # second step says: a student copying the second step there is penalised, one rejecting is not
    from rfdeploy.models.losses import DistillationLoss

    torch.manual_seed(0)
    model = build(tiny_det_cfg).eval()
    with torch.no_grad():
        raw = model.forward_raw(torch.rand(1, 3, 64, 64) * 255)
    teacher = dict(raw, cls1={l: torch.full_like(v, -10.0) for l, v in raw["cls1"].items()},
                   cls2=[torch.full_like(v, 5.0) for v in raw["cls2"]])
    stc = set(tiny_det_cfg.stc_levels)
    agrees = dict(teacher, cls2=[torch.full_like(v, -10.0 if l in stc else 5.0) for l, v in enumerate(raw["cls2"])])
    crit = DistillationLoss(tiny_det_cfg)
    assert float(crit(teacher, teacher)["kd_cls2"]) > 1.0
    assert float(crit(agrees, teacher)["kd_cls2"]) < 1e-4


def test_anchor_layout_differences_are_named():
    from dataclasses import replace

    from rfdeploy.models.config import detector_config
    from rfdeploy.models.losses import same_anchor_layout

    a = detector_config("refineface_mnet025")
    assert same_anchor_layout(a, detector_config("refineface_mnet025_lite")) == []
    assert same_anchor_layout(a, replace(a, anchor_ratio=1.0, stc_threshold=0.9)) == ["anchor_ratio", "stc_threshold"]
