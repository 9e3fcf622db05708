"""CRFace's RoI head (RankerConfig.roi_head): each row reads the backbone's features inside its own
box. Known-answer checks of where it samples (odd input sizes, a padded training batch), that a
row's residual follows its own pixels, config refusals, and the ONNX export (GridSample, no
plugin op) against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.export.api import export_checkpoint
from rfdeploy.models import build, ranker_config
from rfdeploy.models.checkpoint import save_checkpoint
from rfdeploy.models.crface import RoiFeatures, roi_points
from rfdeploy.train.trainer import RankerSamples

N = 40
UNPADDED = PreprocessContract(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR",
                              resize="long_side", resize_to=128, pad_multiple=1)


def _cfg(**kw):
    kw.setdefault("contract", UNPADDED)
    return ranker_config("crface_roi", num_boxes=N, **kw)


def test_points_cover_the_grown_box_row_major():
    box = torch.tensor([[[0.2, 0.4, 0.2, 0.1, 0.9]]])
    pts = roi_points(box, 2, 1.0)[0, 0]
    # cell centres of a 2x2 grid over the box: x at 0.25 and 0.35, y at 0.425 and 0.475
    want = torch.tensor([[0.25, 0.425], [0.35, 0.425], [0.25, 0.475], [0.35, 0.475]])
    assert torch.allclose(pts, want, atol=1e-6)
    grown = roi_points(box, 2, 2.0)[0, 0]
    assert torch.allclose(grown.mean(0), want.mean(0), atol=1e-6)  # same centre, twice the spread
    assert torch.allclose(grown[1] - grown[0], 2 * (want[1] - want[0]), atol=1e-6)


def _coordinate_maps(h: int, w: int, batch: int = 1):
    """C2-C4-like maps whose two channels hold each cell centre's x and y in input pixels, at the
    sizes a stride-2 convolution stack gives (ceil)."""
    feats = []
    for stride in (4, 8, 16):
        fh, fw = -(-h // stride), -(-w // stride)
        ys, xs = torch.meshgrid(torch.arange(fh) * stride + stride / 2, torch.arange(fw) * stride + stride / 2,
                                indexing="ij")
        feats.append(torch.stack([xs, ys]).float()[None].expand(batch, -1, -1, -1).contiguous())
    return feats


def _centre_reader(size: int) -> RoiFeatures:
    """A RoiFeatures whose output is the mean sampled x and y of each row, summed over the 3 maps."""
    roi = RoiFeatures((2, 2, 2), 2, size, 1.0, width=2)
    with torch.no_grad():
        for narrow, read in zip(roi.narrow, roi.read):
            narrow.weight.copy_(torch.eye(2)[:, :, None, None])
            narrow.bias.zero_()
            read.weight.zero_()
            read.weight[0, 0] = 1.0 / (size * size)
            read.weight[1, 1] = 1.0 / (size * size)
            read.bias.zero_()
    return roi


@pytest.mark.parametrize("h,w", [(96, 128), (97, 255), (61, 33)])
def test_rows_sample_their_own_box_at_any_input_size(h, w):
    """Bilinear sampling of a linear map is exact inside it: each row must read its box centre in
    input pixels from every map (3 maps summed), whatever rounding the map sizes took."""
    roi = _centre_reader(3)
    boxes = torch.tensor([[[0.3, 0.35, 0.2, 0.25, 0.9], [0.5, 0.4, 0.1, 0.15, 0.5]]])
    out = roi(_coordinate_maps(h, w), torch.zeros(1, 3, h, w), boxes)[0, :, :, 0]  # 2, rows
    cx = (boxes[0, :, 0] + boxes[0, :, 2] / 2) * w
    cy = (boxes[0, :, 1] + boxes[0, :, 3] / 2) * h
    assert torch.allclose(out[0], 3 * cx, rtol=1e-4) and torch.allclose(out[1], 3 * cy, rtol=1e-4)


def test_extent_maps_boxes_into_a_padded_training_batch():
    """A 60x100 image padded to 128x128: with extent (100/128, 60/128) its rows read the same
    pixels as the unpadded image does without one."""
    roi = _centre_reader(2)
    boxes = torch.tensor([[[0.25, 0.3, 0.3, 0.3, 0.8]]])
    plain = roi(_coordinate_maps(60, 100), torch.zeros(1, 3, 60, 100), boxes)
    padded = roi(_coordinate_maps(128, 128), torch.zeros(1, 3, 128, 128), boxes,
                 extent=torch.tensor([[100 / 128, 60 / 128]]))
    assert torch.allclose(plain, padded, rtol=1e-4)


def _trained_like(model):
    with torch.no_grad():
        for read in model.roi.read:
            read.weight.normal_(0, 0.05)
        model.box_head.out.weight.normal_(0, 0.05)
    return model


def _boxes(seed=0, valid=20):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(1, N, 5, generator=g) * torch.tensor([0.7, 0.7, 0.25, 0.25, 1.0])
    b[..., 4] = torch.sort(0.05 + 0.9 * torch.rand(1, N, generator=g), dim=1, descending=True).values
    b[:, valid:] = 0
    return b


def test_untrained_roi_head_changes_nothing():
    torch.manual_seed(0)
    m = build(_cfg()).eval()
    boxes = _boxes()
    with torch.no_grad():
        assert torch.equal(m(torch.randn(1, 3, 96, 128) * 50, boxes), boxes[..., 4])


def test_a_rows_residual_follows_its_own_pixels():
    """Two rows with the same box, score and BPN neighbourhood but over different pixels get
    different residuals only through the RoI head: swap the image halves and the two rows swap
    their RoI contribution."""
    torch.manual_seed(1)
    m = _trained_like(build(_cfg())).eval()
    img = torch.randn(1, 3, 64, 128) * 50
    swapped = torch.cat([img[..., 64:], img[..., :64]], dim=-1)
    boxes = torch.zeros(1, N, 5)
    boxes[0, 0] = torch.tensor([0.1, 0.3, 0.3, 0.4, 0.6])  # left half
    boxes[0, 1] = torch.tensor([0.6, 0.3, 0.3, 0.4, 0.6])  # right half
    with torch.no_grad():
        roi_a = m.roi(m.backbone(img)[:3], img, boxes)[0, :, :2, 0]
        roi_b = m.roi(m.backbone(swapped)[:3], swapped, boxes)[0, :, :2, 0]
    assert not torch.allclose(roi_a[:, 0], roi_a[:, 1], atol=1e-3)  # different pixels, different features
    # the backbone is translation-equivariant away from the borders: the swap moves the features
    assert torch.allclose(roi_a[:, 0], roi_b[:, 1], atol=0.1 * roi_a.abs().max().item())


def test_the_preset_builds_on_its_own():
    """`--config crface_roi` / models.load(config="crface_roi") need the preset to be valid alone."""
    cfg = ranker_config("crface_roi")
    assert cfg.roi_head and cfg.contract.pad_multiple == 1 and cfg.contract.channel_order == "BGR"


def test_config_refusals():
    with pytest.raises(ValueError, match="needs box_head"):
        _cfg(box_head=False)
    with pytest.raises(ValueError, match="unpadded input"):
        _cfg(contract=PreprocessContract(resize="long_side", resize_to=128, pad_multiple=32))
    with pytest.raises(ValueError, match="roi_size"):
        _cfg(roi_size=0)


def test_samples_carry_the_image_extent():
    x = np.zeros((3, 128, 128), np.float32)
    x[:, :60, :100] = 1.0
    cand = np.zeros((N, 5), np.float32)
    cand[:3] = [[0.1, 0.1, 0.2, 0.2, 0.9], [0.5, 0.5, 0.2, 0.2, 0.8], [0.3, 0.3, 0.1, 0.1, 0.7]]
    oracle = np.zeros(N, np.float32)
    ds = RankerSamples([(x, cand, oracle)] * 6, flip=True, augment=True, with_extent=True)
    for i in range(len(ds)):
        *_, extent = ds[i]
        assert torch.allclose(extent, torch.tensor([100 / 128, 60 / 128]))
    assert len(RankerSamples([(x, cand, oracle)]).__getitem__(0)) == 3


def test_export_runs_gridsample_and_matches_torch(tmp_path):
    torch.manual_seed(2)
    m = _trained_like(build(_cfg())).eval()
    ckpt = tmp_path / "roi.safetensors"
    save_checkpoint(m, ckpt)
    out = tmp_path / "roi.onnx"
    list(export_checkpoint(ckpt, out))  # verified against PyTorch inside (raises beyond tolerance)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "GridSample" in ops and "RoiAlign" not in ops
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    img, boxes = torch.randn(1, 3, 72, 128) * 50, _boxes(3)
    got = sess.run(None, {"image": img.numpy(), "boxes": boxes.numpy()})[0]
    with torch.no_grad():
        want = m(img, boxes).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want - boxes[..., 4].numpy()).max() > 1e-3  # the residual is not trivially zero


def test_fp16_export_keeps_sampling_and_shape_arithmetic_in_float32(tmp_path):
    """GridSample and the map sizes that place its points stay float32 in the FP16 file (the size
    casts had broken the converter), and the FP16 scores stay close to the float32 ones."""
    from tests.precision_fixtures import elem_types

    torch.manual_seed(4)
    m = _trained_like(build(_cfg())).eval()
    ckpt = tmp_path / "roi.safetensors"
    save_checkpoint(m, ckpt)
    list(export_checkpoint(ckpt, tmp_path / "roi.onnx", fp16=True))
    g = onnx.load(str(tmp_path / "roi.fp16.onnx"))
    types = elem_types(g)
    samplers = [n for n in g.graph.node if n.op_type == "GridSample"]
    assert len(samplers) == 3
    assert all(types[t] == onnx.TensorProto.FLOAT for n in samplers for t in [*n.input, *n.output])
    assert any(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in g.graph.node if n.op_type == "Conv")
    img, boxes = (torch.randn(1, 3, 72, 128) * 50).numpy(), _boxes(5).numpy()
    feeds = {"image": img, "boxes": boxes}
    got32 = ort.InferenceSession(str(tmp_path / "roi.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got16 = ort.InferenceSession(str(tmp_path / "roi.fp16.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(got16 - got32).max() < 5e-3


def test_int8_calibration_keeps_sampling_in_float_and_runs(tmp_path):
    """The RoI ranker through `rfdeploy calibrate` (TensorRT Q/DQ): its convolutions get Q/DQ, the
    sampling and the map sizes stay float, and onnxruntime runs the file close to the float one."""
    from PIL import Image

    from rfdeploy.calib.api import calibrate

    torch.manual_seed(6)
    m = _trained_like(build(_cfg())).eval()
    save_checkpoint(m, tmp_path / "roi.safetensors")
    list(export_checkpoint(tmp_path / "roi.safetensors", tmp_path / "roi.onnx"))
    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 140, 3), dtype=np.uint8)).save(pics / f"{i}.png")
    calibrate(tmp_path / "roi.onnx", pics, tmp_path / "roi.int8.onnx", num=3, method="max",
              cache_dir=tmp_path / "cache")
    g = onnx.load(str(tmp_path / "roi.int8.onnx"))
    by_output = {o: n for n in g.graph.node for o in n.output}
    assert sum(n.op_type == "QuantizeLinear" for n in g.graph.node) > 0
    for n in g.graph.node:
        if n.op_type == "GridSample":  # its grid comes from float math, not a dequantised tensor
            assert by_output[n.input[1]].op_type != "DequantizeLinear"
    img, boxes = (torch.randn(1, 3, 72, 128) * 50).numpy(), _boxes(7).numpy()
    feeds = {"image": img, "boxes": boxes}
    f32 = ort.InferenceSession(str(tmp_path / "roi.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    i8 = ort.InferenceSession(str(tmp_path / "roi.int8.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert i8.shape == f32.shape and np.abs(i8 - f32).max() < 0.1
