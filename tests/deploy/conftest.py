from __future__ import annotations

import pytest

from tests.deploy.retina import RETINA_ONNX


@pytest.fixture(scope="session")
def retina_onnx():
    if not RETINA_ONNX.is_file():
        pytest.skip(f"{RETINA_ONNX} not present (third-party model from the shared data folder)")
    return RETINA_ONNX


# --- tiny networks with rfdeploy's detector/ranker interfaces, and TensorRT engines of them ------

import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from rfdeploy.core.contract import PreprocessContract  # noqa: E402
from rfdeploy.core.metadata import set_onnx_metadata  # noqa: E402

TINY_K = 64  # detector candidates
TINY_N = 32  # ranker boxes


def _tiny_detector():
    import torch
    from torch import nn

    class TinyFaceDetector(nn.Module):
        """image [B,3,H,W] -> boxes [B,K,4] (input pixels), scores [B,K]: stride-8 cells, each
        predicting a box around its centre; the top K by score."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
            self.head = nn.Conv2d(16, 5, 3, 1, 1)

        def forward(self, x):
            y = self.head(self.body(x))  # B,5,h,w
            b, _, h, w = y.shape
            ys = (torch.arange(h, dtype=x.dtype) + 0.5) * 8
            xs = (torch.arange(w, dtype=x.dtype) + 0.5) * 8
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            size = 16 * torch.exp(y[:, 2:4].clamp(-2, 2))
            ctr_x = cx + 8 * torch.tanh(y[:, 0])
            ctr_y = cy + 8 * torch.tanh(y[:, 1])
            boxes = torch.stack([ctr_x - size[:, 0] / 2, ctr_y - size[:, 1] / 2,
                                 ctr_x + size[:, 0] / 2, ctr_y + size[:, 1] / 2], -1).reshape(b, -1, 4)
            scores = torch.sigmoid(y[:, 4]).reshape(b, -1)
            top, idx = torch.topk(scores, TINY_K, dim=1)
            return torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4)), top

    torch.manual_seed(0)
    return TinyFaceDetector().eval()


def _tiny_ranker():
    import torch
    from torch import nn

    class TinyRanker(nn.Module):
        def __init__(self):
            super().__init__()
            self.feat = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.img = nn.Linear(8, 16)
            self.box = nn.Linear(5, 16)
            self.out = nn.Linear(16, 1)

        def forward(self, image, boxes):
            g = self.img(self.feat(image).flatten(1))
            h = torch.relu(self.box(boxes) + g[:, None, :])
            return torch.sigmoid(self.out(h)).squeeze(-1) * (boxes[..., 4] > 0).to(image.dtype)

    torch.manual_seed(1)
    return TinyRanker().eval()


def _export(module, args, path: Path, ins, outs, dyn, meta: dict) -> Path:
    import onnx
    import torch

    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=ins, output_names=outs, dynamic_axes=dyn,
                          opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    set_onnx_metadata(m, meta)
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> dict[str, Path]:
    import torch

    d = tmp_path_factory.mktemp("tiny_onnx")
    det_contract = PreprocessContract()
    rank_contract = PreprocessContract(resize="long_side", resize_to=128)
    det = _export(_tiny_detector(), (torch.zeros(1, 3, 64, 64),), d / "detector.onnx", ["image"],
                  ["boxes", "scores"], {"image": {0: "b", 2: "h", 3: "w"}, "boxes": {0: "b"}, "scores": {0: "b"}},
                  {"rfdeploy.kind": "detector", "rfdeploy.contract": det_contract.to_json(),
                   "rfdeploy.config": json.dumps({"kind": "refineface", "candidates": TINY_K})})
    rank = _export(_tiny_ranker(), (torch.zeros(1, 3, 64, 64), torch.zeros(1, TINY_N, 5)), d / "ranker.onnx",
                   ["image", "boxes"], ["scores"],
                   {"image": {0: "b", 2: "h", 3: "w"}, "boxes": {0: "b"}, "scores": {0: "b"}},
                   {"rfdeploy.kind": "ranker", "rfdeploy.contract": rank_contract.to_json(),
                    "rfdeploy.config": json.dumps({"kind": "crface", "num_boxes": TINY_N})})
    return {"detector": det, "ranker": rank}


@pytest.fixture(scope="session")
def tiny_engines(tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    """TensorRT plans + manifests (TensorRT-RTX builds on the CPU)."""
    if not any(importlib.util.find_spec(n) for n in ("tensorrt", "tensorrt_rtx")):
        pytest.skip("neither tensorrt nor tensorrt_rtx imports here: engine builds cannot run")
    from rfdeploy.engines.build import build_engine
    from rfdeploy.engines.profiles import specs_from_cli

    d = tmp_path_factory.mktemp("tiny_engines")
    det = d / "detector.engine"
    build_engine(tiny_onnx["detector"], det, specs_from_cli(["1x3x64x64"], ["4x3x256x256"], ["4x3x256x256"]))
    rank = d / "ranker.engine"
    build_engine(tiny_onnx["ranker"], rank, specs_from_cli(["1x3x64x64"], ["1x3x128x128"], ["2x3x128x128"]))
    return {"detector": det, "ranker": rank}
