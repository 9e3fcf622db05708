"""Small detector- and ranker-shaped networks exported to ONNX, for the precision tests.

They carry the same structure as the real exports (conv network, then Sigmoid / STC filter /
Exp box decode / anchor arithmetic / TopK) so the region analysis sees a realistic graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.metadata import CONTRACT as METADATA_KEY

CONTRACT = PreprocessContract(pad_multiple=32)
TOPK = 48


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ToyDetector(nn.Module):
    """Two pyramid levels (strides 8 and 16), one anchor per location."""

    def __init__(self, width: int = 16, topk: bool = True):
        super().__init__()
        self.topk = topk
        self.stem = nn.Sequential(_block(3, width, 2), _block(width, width, 2), _block(width, width, 2))
        self.down = _block(width, width, 2)
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.cls = nn.Conv2d(width, 1, 3, 1, 1)
        self.stc = nn.Conv2d(width, 1, 3, 1, 1)
        self.box = nn.Conv2d(width, 4, 3, 1, 1)
        self.strides = (8, 16)
        with torch.no_grad():  # spread the logits so Sigmoid and the STC filter both matter
            self.cls.bias.fill_(-1.0)
            self.stc.bias.fill_(-2.0)
            self.box.weight.mul_(0.3)
            self.cls.weight.mul_(10.0)

    def _level(self, f: torch.Tensor, stride: int):
        h = self.head(f)
        b = f.shape[0]
        cls = self.cls(h).flatten(1)
        stc = self.stc(h).flatten(1)
        box = self.box(h).flatten(2).transpose(1, 2)
        hh, ww = f.shape[2], f.shape[3]
        ys = torch.arange(hh, dtype=torch.float32) * stride + stride / 2
        xs = torch.arange(ww, dtype=torch.float32) * stride + stride / 2
        cy = ys[:, None].expand(hh, ww).reshape(-1)
        cx = xs[None, :].expand(hh, ww).reshape(-1)
        size = torch.full_like(cx, 4.0 * stride)
        anchors = torch.stack([cx, cy, size, size], -1).unsqueeze(0).expand(b, -1, -1)
        return cls, stc, box, anchors

    def forward(self, image: torch.Tensor):
        f8 = self.stem(image)
        f16 = self.down(f8)
        parts = [self._level(f8, 8), self._level(f16, 16)]
        cls = torch.cat([p[0] for p in parts], 1)
        stc = torch.cat([p[1] for p in parts], 1)
        box = torch.cat([p[2] for p in parts], 1)
        anc = torch.cat([p[3] for p in parts], 1)
        scores = torch.sigmoid(cls)
        neg = 1.0 - torch.sigmoid(stc)
        scores = torch.where(neg > 0.99, torch.zeros_like(scores), scores)
        cx = anc[..., 0] + box[..., 0] * 0.1 * anc[..., 2]
        cy = anc[..., 1] + box[..., 1] * 0.1 * anc[..., 3]
        w = anc[..., 2] * torch.exp(box[..., 2] * 0.2)
        h = anc[..., 3] * torch.exp(box[..., 3] * 0.2)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        if not self.topk:  # every anchor, for element-wise accuracy comparisons
            return boxes, scores
        top, idx = torch.topk(scores, TOPK, dim=1)
        boxes = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        return boxes, top


class ToyRanker(nn.Module):
    """Image features pooled per box, a small MLP, and a residual on the input score."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(_block(3, width, 2), _block(width, width, 2), nn.AdaptiveAvgPool2d(1))
        self.mlp = nn.Sequential(nn.Linear(width + 5, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, image: torch.Tensor, boxes: torch.Tensor):
        g = self.net(image).flatten(1)  # B x C
        n = boxes.shape[1]
        geo = torch.cat([boxes[..., :4] / 640.0, boxes[..., 4:]], -1)
        x = torch.cat([g[:, None, :].expand(-1, n, -1), geo], -1)
        delta = self.mlp(x).squeeze(-1)
        return (boxes[..., 4] + 0.1 * delta).clamp(0.0, 1.0)


def _set_metadata(path: Path, extra: dict[str, str] | None = None) -> None:
    m = onnx.load(str(path))
    props = {METADATA_KEY: CONTRACT.to_json(), "rfdeploy.config": '{"name": "toy"}', **(extra or {})}
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def export_toy_detector(path: Path, seed: int = 0, width: int = 16, topk: bool = True) -> Path:
    torch.manual_seed(seed)
    model = ToyDetector(width, topk).eval()
    # non-trivial BN statistics so folded weights are not identity-like
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 128, 160)
    torch.onnx.export(
        model, (x,), str(path), input_names=["image"], output_names=["boxes", "scores"],
        opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}, "boxes": {0: "B"}, "scores": {0: "B"}},
    )
    _set_metadata(path)
    return path


def export_toy_ranker(path: Path, seed: int = 0, n: int = 32) -> Path:
    torch.manual_seed(seed)
    model = ToyRanker().eval()
    x = torch.randn(1, 3, 128, 128)
    boxes = torch.rand(1, n, 5) * torch.tensor([128, 128, 128, 128, 1.0])
    torch.onnx.export(
        model, (x, boxes), str(path), input_names=["image", "boxes"], output_names=["scores"],
        opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}, "boxes": {0: "B", 1: "N"}, "scores": {0: "B", 1: "N"}},
    )
    _set_metadata(path)
    return path


def write_images(folder: Path, count: int, size: tuple[int, int] = (160, 120), seed: int = 0) -> list[Path]:
    """Smooth random colour images (JPEG and PNG) with some structure for calibration."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        base = rng.uniform(0, 255, 3)
        fx, fy = rng.uniform(0.01, 0.1, 2)
        img = base + 60 * np.stack([np.sin(xx * fx + c) * np.cos(yy * fy - c) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        p = folder / (f"img{i:03d}." + ("jpg" if i % 2 == 0 else "png"))
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


def build_with_tensorrt_rtx(path: Path) -> int:
    """Parse and build ``path`` with TensorRT-RTX (CPU-only ahead-of-time build); plan size in bytes.

    Skips the calling test when tensorrt_rtx is not importable.
    """
    import pytest

    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        raise AssertionError([str(parser.get_error(i)) for i in range(parser.num_errors)])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if len(t.shape) == 4:
            profile.set_shape(t.name, (1, 3, 64, 64), (1, 3, 128, 128), (2, 3, 256, 256))
        else:
            profile.set_shape(t.name, (1, 1, 5), (1, 32, 5), (2, 64, 5))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, f"TensorRT-RTX could not build {path}"
    return plan.nbytes


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of an ONNX model, from fresh strict shape inference (stored
    value_info is not trusted: a converter can leave stale duplicates)."""
    from rfdeploy.export.fp16 import infer_fresh

    g = infer_fresh(model, strict_mode=True).graph
    t = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    t.update({i.name: i.data_type for i in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            t[n.output[0]] = n.attribute[0].t.data_type
    return t
