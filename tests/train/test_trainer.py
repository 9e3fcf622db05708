"""The training loops: learning-rate schedules, a few real detector steps (FSM and SML on) that
write a loadable checkpoint and a loss log, frozen stages that stay frozen, and a ranker that
fits a small set of candidate lists under the pairwise ranking loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rfdeploy.models import build, load
from rfdeploy.models.config import detector_config, ranker_config
from rfdeploy.train.trainer import RankerSamples, TrainOptions, train_detector, train_ranker


def test_sgd_schedule_warms_up_then_steps_down():
    o = TrainOptions(lr=0.01, warmup_steps=10, warmup_start_lr=0.001, milestones=(0.5, 0.75))
    assert o.lr_at(0, 0.0) == pytest.approx(0.001)
    assert o.lr_at(5, 0.0) == pytest.approx(0.0055)
    assert o.lr_at(10, 0.2) == pytest.approx(0.01)
    assert o.lr_at(50, 0.5) == pytest.approx(0.001)
    assert o.lr_at(90, 0.9) == pytest.approx(0.0001)


@pytest.mark.parametrize("ratio", [1e-3, 0.1])
def test_adam_decays_exponentially_to_the_final_ratio(ratio):
    o = TrainOptions(optimizer="adam", lr=1e-3, warmup_steps=0, final_lr_ratio=ratio)
    assert o.lr_at(0, 0.0) == pytest.approx(1e-3)
    assert o.lr_at(50, 0.5) == pytest.approx(1e-3 * math.sqrt(ratio))
    assert o.lr_at(100, 1.0) == pytest.approx(1e-3 * ratio)


def test_progress_follows_the_time_budget_when_it_ends_training_sooner():
    o = TrainOptions(steps=1000, time_budget_s=100.0)
    assert o.progress(10, 50.0) == pytest.approx(0.5)
    assert o.progress(900, 10.0) == pytest.approx(0.9)
    assert o.progress(10, 500.0) == 1.0


def test_detector_trains_a_few_steps_with_fsm(tiny_data, tmp_path):
    from rfdeploy.train.recipes import synthetic_dataset

    cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=200)
    ds = synthetic_dataset(tiny_data, cfg, length=8, size=128)
    opts = TrainOptions(steps=3, batch_size=2, workers=0, lr=1e-3, warmup_steps=1, log_every=1, save_every=100,
                        keep_every=2, freeze_stages=2)
    torch.manual_seed(opts.seed)
    init = build(cfg).state_dict()
    res = train_detector(cfg, ds, opts, tmp_path / "det", use_fsm=True)
    assert res.steps == 3 and res.checkpoint.is_file()
    # keep_every=2 keeps the step-2 snapshot beside last.safetensors, which holds step 3
    assert sorted(p.name for p in (tmp_path / "det").glob("*.safetensors")) == ["last.safetensors", "step000002.safetensors"]
    log = [json.loads(line) for line in res.log.read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert all(math.isfinite(r[k]) for k in ("stc1", "stc2", "str1", "str2", "fsm", "total"))
    assert any(r["fsm"] > 0 for r in log), "FSM loss must take part when enabled"
    trained = load(res.checkpoint).state_dict()
    assert "fsm" not in " ".join(trained), "the checkpoint holds the inference network only"
    frozen = [k for k in trained if k.startswith("backbone.net.features.0.") and k.endswith("weight")]
    moved = [k for k in trained if k.startswith("cls_head") and k.endswith("weight")]
    assert frozen and moved
    assert all(torch.equal(trained[k], init[k]) for k in frozen), "frozen stages must not move"
    assert any(not torch.equal(trained[k], init[k]) for k in moved), "the heads must train"


def _ranking_items(cfg, n_items: int, seed: int = 0):
    """Candidate lists whose oracle (IoU with the truth) is hidden in the box geometry, not in the
    detector's score order: a ranker that reads the boxes can reorder them."""
    rng = np.random.default_rng(seed)
    items = []
    n = cfg.num_boxes
    for _ in range(n_items):
        x = rng.standard_normal((3, 64, 64)).astype(np.float32)
        cand = np.zeros((n, 5), np.float32)
        live = n // 2
        cand[:live, :4] = rng.uniform(0.05, 0.4, (live, 4))
        cand[:live, 4] = np.sort(rng.uniform(0.1, 0.9, live))[::-1]
        oracle = np.zeros(n, np.float32)
        oracle[:live] = cand[:live, 2]  # wider boxes "overlap the face more"
        items.append((x, cand, oracle))
    return items


def test_ranker_fits_candidate_order(tmp_path):
    from rfdeploy.models.losses import ranking_loss

    cfg = ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=32)
    samples = RankerSamples(_ranking_items(cfg, 4), flip=False)
    # the whole backbone frozen (its batch norms in eval mode): the signal is in the boxes
    opts = TrainOptions(steps=60, batch_size=4, workers=0, optimizer="adam", lr=3e-3, warmup_steps=0,
                        final_lr_ratio=0.5, log_every=1, save_every=1000, freeze_stages=4)
    res = train_ranker(cfg, samples, opts, tmp_path / "rank")
    model = load(res.checkpoint).eval()
    x, cand, oracle = (torch.stack(t) for t in zip(*(samples[i] for i in range(4))))
    with torch.no_grad():
        trained = ranking_loss(model(x, cand), oracle, cand[..., 4] > 0).item()
        untrained = ranking_loss(build(cfg).eval()(x, cand), oracle, cand[..., 4] > 0).item()
    print(f"ranking loss untrained {untrained:.3f} -> trained {trained:.3f}")
    assert untrained > 1.0  # the detector's score order disagrees with the oracle
    assert trained < 0.5 * untrained, (untrained, trained)


def test_cli_trains_on_scenes_plus_a_labelled_set_from_a_checkpoint(tiny_data, tmp_path):
    from click.testing import CliRunner

    from rfdeploy.cli import main
    from rfdeploy.models.checkpoint import save_checkpoint
    from rfdeploy.train.recipes import default_detector_config

    bg = sorted((tiny_data / "backgrounds").glob("*.jpg"))[0]
    ann = tmp_path / "labelled.json"
    ann.write_text(json.dumps({"images": [{"file": str(bg), "width": 900, "height": 700,
                                           "faces": [{"box": [100, 100, 180, 200], "ignore": False}]}]}))
    init = tmp_path / "init.safetensors"
    save_checkpoint(build(default_detector_config()), init)
    args = ["train", "detector", "--data", str(tiny_data), "-o", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
            "--size", "128", "--workers", "0", "--no-fsm", "--freeze-stages", "4", "--init", str(init),
            "--extra-annotations", str(ann), "--extra-repeats", "2"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "2 steps" in r.output and load(tmp_path / "run" / "last.safetensors").cfg == default_detector_config()
    bad = CliRunner().invoke(main, args[:-4] + ["--extra-annotations", str(tmp_path / "missing.json")])
    assert bad.exit_code == 2 and "not found" in bad.output
    out_of_range = CliRunner().invoke(main, args + ["--extra-min-crop", "0"])
    assert out_of_range.exit_code == 2 and "--extra-min-crop" in out_of_range.output


def test_labelled_sets_get_the_requested_smallest_crop(tmp_path):
    # --extra-min-crop reaches the augmentation of every labelled set, and only theirs
    from PIL import Image

    from rfdeploy.train.recipes import default_detector_config, with_labelled_sets

    Image.new("RGB", (900, 700)).save(tmp_path / "photo.png")
    ann = tmp_path / "labelled.json"
    ann.write_text(json.dumps({"images": [{"file": "photo.png", "width": 900, "height": 700,
                                           "faces": [{"box": [400, 300, 440, 340], "ignore": False}]}]}))
    base = [None]  # a one-item stand-in for the composed scenes
    mixed = with_labelled_sets(base, [ann, ann], default_detector_config(), size=128, min_crop=0.15)
    assert mixed.parts[0][0] is base
    assert [part.transform.crop_scale for part, _ in mixed.parts[1:]] == [(0.15, 1.0)] * 2
    default = with_labelled_sets(base, [ann], default_detector_config(), size=128)
    assert default.parts[1][0].transform.crop_scale == (0.5, 1.0)


def test_cli_distils_a_lite_student_from_a_teacher_and_takes_its_backbone(tiny_data, tmp_path):
    # --init-backbone TEACHER.safetensors takes the teacher's backbone and contract; --distill adds
    # the dense distillation terms to the logged losses; a teacher whose anchors differ is refused
    from dataclasses import replace

    from click.testing import CliRunner

    from rfdeploy.cli import main
    from rfdeploy.models.checkpoint import save_checkpoint
    from rfdeploy.train.recipes import default_detector_config

    torch.manual_seed(0)
    teacher = build(default_detector_config())
    with torch.no_grad():
        for p in teacher.backbone.parameters():
            p.add_(0.01)  # weights no fresh backbone has
        teacher.cls_head.pred[-1].bias.fill_(0.0)  # faces everywhere: the student's prior disagrees
    tpath = tmp_path / "teacher.safetensors"
    save_checkpoint(teacher, tpath)
    args = ["train", "detector", "--data", str(tiny_data), "-o", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
            "--size", "128", "--workers", "0", "--no-fsm", "--freeze-stages", "4", "--preset", "refineface_mnet025_lite",
            "--init-backbone", str(tpath), "--distill", str(tpath)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    student = load(tmp_path / "run" / "last.safetensors")
    assert student.cfg.shared_tower and student.cfg.contract == teacher.cfg.contract
    for a, b in zip(student.backbone.state_dict().values(), teacher.backbone.state_dict().values()):
        assert torch.equal(a, b)  # stages frozen: the teacher's weights as they were
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["kd_total"] > 0
    assert logged[-1]["total"] == pytest.approx(sum(logged[-1][k] for k in ("stc1", "stc2", "str1", "str2", "fsm", "kd_total")),
                                                abs=1e-3)

    other = tmp_path / "other.safetensors"
    save_checkpoint(build(replace(default_detector_config(), anchor_ratio=1.0)), other)
    bad = CliRunner().invoke(main, args[:-1] + [str(other)])
    assert bad.exit_code == 2 and "anchor_ratio" in bad.output and "Traceback" not in bad.output
    ranker = tmp_path / "ranker.safetensors"
    save_checkpoint(build(ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8)), ranker)
    not_detector = CliRunner().invoke(main, args[:-1] + [str(ranker)])
    assert not_detector.exit_code == 2 and "not a detector checkpoint" in not_detector.output
    zero = CliRunner().invoke(main, args + ["--distill-score-weight", "0"])
    assert zero.exit_code == 2 and "--distill-score-weight must be > 0" in zero.output
