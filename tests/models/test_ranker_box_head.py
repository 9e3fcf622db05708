"""CRFace's per-candidate head (RankerConfig.box_head): off for checkpoints made before it, an
identity when untrained, per-row, and exported with the fp32 score + residual + clip tail."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto

from rfdeploy.export.api import export_checkpoint
from rfdeploy.models import DEFAULT_RANKER, build, load, ranker_config
from rfdeploy.models.checkpoint import save_checkpoint
from rfdeploy.models.config import RankerConfig
from tests.precision_fixtures import elem_types

N = 48


def _cfg(**kw):
    return ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=N, **kw)


def _boxes(valid=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(2, N, 5, generator=g) * torch.tensor([0.7, 0.7, 0.3, 0.3, 1.0])
    b[..., 4] = torch.sort(0.05 + 0.9 * torch.rand(2, N, generator=g), dim=1, descending=True).values
    b[:, valid:] = 0
    return b


def _trained_like(model):
    """Random output weights: a non-trivial per-row residual."""
    with torch.no_grad():
        model.box_head.out.weight.normal_(0, 0.05)
        model.box_head.out.bias.fill_(0.01)
    return model


def test_configs_stored_before_the_head_have_it_off():
    d = _cfg().to_dict()
    del d["box_head"]
    assert RankerConfig.from_dict(d).box_head is False
    old = build(RankerConfig.from_dict(d))
    assert old.box_head is None and not any(k.startswith("box_head.") for k in old.state_dict())
    # the bundled ranker has the head (and the RoI features it reads)
    bundled = load(DEFAULT_RANKER)
    assert bundled.cfg.box_head and bundled.box_head is not None


def test_untrained_head_returns_the_detector_scores():
    m = build(_cfg(box_head=True)).eval()
    boxes = _boxes()
    with torch.no_grad():
        assert torch.equal(m(torch.randn(2, 3, 64, 96), boxes), boxes[..., 4])


def test_a_rows_residual_follows_its_own_box():
    """Changing one candidate's size moves its own refined score (the paper's head reads every
    row out of one pooled vector; here each row has its own input)."""
    m = _trained_like(build(_cfg(box_head=True)).eval())
    img, boxes = torch.randn(1, 3, 64, 96), _boxes()[:1]
    bigger = boxes.clone()
    bigger[0, 20, 2:4] += 0.2
    with torch.no_grad():  # the paper's FC is still zero: raw - score is the head's residual
        a = m(img, boxes, clip=False) - boxes[..., 4]
        b = m(img, bigger, clip=False) - bigger[..., 4]
    assert abs(float(a[0, 20] - b[0, 20])) > 1e-4
    # rows beyond the BPN's field of view (9 layers of 3 rows: +-9) move only through the pooled
    # image context, which is the same for all of them
    far = torch.tensor([0, 1, 2, 40, 41])
    delta = (b[0, far] - a[0, far]).abs()
    assert float(delta.max()) < abs(float(a[0, 20] - b[0, 20]))


def test_unclipped_output_for_training():
    m = build(_cfg(box_head=True)).eval()
    with torch.no_grad():
        m.box_head.out.bias.fill_(-0.5)
        boxes = _boxes()
        img = torch.randn(2, 3, 64, 96)
        clipped, raw = m(img, boxes), m(img, boxes, clip=False)
    live = boxes[..., 4] > 0
    assert torch.allclose(raw[live], boxes[..., 4][live] - 0.5, atol=1e-6)
    assert torch.equal(clipped, raw.clamp(0, 1))
    assert not raw[~live].any()


def test_export_fp32_and_fp16_keep_the_float32_tail(tmp_path):
    m = _trained_like(build(_cfg(box_head=True)).eval())
    ckpt = save_checkpoint(m, tmp_path / "rank.safetensors")
    lines = list(export_checkpoint(ckpt, tmp_path / "rank.onnx", fp16=True))  # verifies against torch
    assert (tmp_path / "rank.fp16.onnx").is_file(), lines
    feeds = {"image": np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32),
             "boxes": _boxes().numpy()}
    with torch.no_grad():
        ref = m(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["boxes"])).numpy()
    assert np.abs(ref - feeds["boxes"][..., 4]).max() > 1e-3  # the head changes the scores
    got32 = ort.InferenceSession(str(tmp_path / "rank.onnx")).run(None, feeds)[0]
    got16 = ort.InferenceSession(str(tmp_path / "rank.fp16.onnx")).run(None, feeds)[0]
    assert np.abs(got32 - ref).max() < 1e-5
    assert np.abs(got16 - ref).max() < 2e-3
    g = onnx.load(str(tmp_path / "rank.fp16.onnx"))
    clip = [n for n in g.graph.node if n.op_type == "Clip"][-1]  # the output clip (ReLU6 is Clip too)
    assert elem_types(g)[clip.input[0]] == TensorProto.FLOAT
