"""The exported graph is the inference path only, with the contract inside, and matches PyTorch."""

import json

import numpy as np
import onnx
import pytest
import torch

from rfdeploy.contract import PreprocessContract
from rfdeploy.export.api import export_checkpoint, verification_inputs
from rfdeploy.export.onnx_export import export_model, read_metadata
from rfdeploy.export.verify import verify_onnx
from rfdeploy.models import build, detector_config, ranker_config
from rfdeploy.models.checkpoint import save_checkpoint
from rfdeploy.models.config import config_from_dict
from rfdeploy.models.losses import RefineFaceLoss


@pytest.fixture(scope="module")
def det_cfg():
    return detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=200)


@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory, det_cfg):
    torch.manual_seed(0)
    model = build(det_cfg).eval()
    path = tmp_path_factory.mktemp("onnx") / "det.onnx"
    export_model(model, path, source_sha256="ab" * 32)
    return model, path


def test_graph_is_inference_only(exported_detector, det_cfg):
    model, path = exported_detector
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert "RoiAlign" not in ops  # FSM is training-only
    assert {"TopK", "Sigmoid", "Exp"} <= ops  # decode + candidate selection live in the graph
    assert "NonMaxSuppression" not in ops  # NMS stays outside
    assert [o.name for o in m.graph.output] == ["boxes", "scores"]
    assert [i.name for i in m.graph.input] == ["image"]
    # no FSM / loss parameters: the FSM head's weight shapes appear nowhere in the initializers
    fsm = RefineFaceLoss(det_cfg, use_fsm=True).fsm
    # its conv kernels (4-d); vectors like biases share shapes with other layers by chance
    fsm_shapes = {tuple(p.shape) for p in fsm.parameters() if p.dim() == 4} - {tuple(p.shape) for p in model.parameters()}
    init_shapes = {tuple(i.dims) for i in m.graph.initializer}
    assert fsm_shapes and not (fsm_shapes & init_shapes)
    assert not any("fsm" in i.name or "loss" in i.name for i in m.graph.initializer)
    # TensorRT's TopK limit
    for n in m.graph.node:
        if n.op_type == "TopK":
            k = [i for i in m.graph.initializer if i.name == n.input[1]]
            assert not k or int(onnx.numpy_helper.to_array(k[0]).reshape(-1)[0]) <= 3840
    assert m.opset_import[0].version >= 17


def test_dynamic_axes_and_static_candidate_count(exported_detector, det_cfg):
    _, path = exported_detector
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    out = m.graph.output[1].type.tensor_type.shape.dim
    assert out[1].dim_value == det_cfg.candidates


def test_contract_and_config_in_metadata(exported_detector, det_cfg):
    _, path = exported_detector
    meta = read_metadata(path)
    assert PreprocessContract.from_json(meta["rfdeploy.contract"]) == det_cfg.contract
    assert config_from_dict(json.loads(meta["rfdeploy.config"])) == det_cfg
    assert meta["rfdeploy.kind"] == "detector"
    assert meta["rfdeploy.source_sha256"] == "ab" * 32
    assert meta["rfdeploy.precision"] == "fp32"


def test_onnxruntime_matches_torch(exported_detector, det_cfg):
    model, path = exported_detector
    rep = verify_onnx(model, path, verification_inputs(det_cfg.contract))
    assert rep.ok and rep.worst_rel <= 1e-5
    assert len(rep.cases) == 4  # a real photo and three random sizes


def test_verification_catches_a_wrong_model(exported_detector, det_cfg):
    from rfdeploy.errors import BuildError

    model, path = exported_detector
    other = build(det_cfg).eval()
    with torch.no_grad():
        other.cls_head.pred.bias += 3.0
    with pytest.raises(BuildError, match="differs from PyTorch"):
        verify_onnx(other, path, verification_inputs(det_cfg.contract)[:1])


def test_ranker_export(tmp_path):
    cfg = ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64)
    model = build(cfg).eval()
    with torch.no_grad():
        for fc in model.conf_fc:
            fc.bias.normal_(0, 0.1)  # a non-trivial residual
    path = tmp_path / "rank.onnx"
    export_model(model, path)
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["image", "boxes"]
    assert m.graph.input[1].type.tensor_type.shape.dim[1].dim_value == 64
    rep = verify_onnx(model, path, [("random", np.random.default_rng(1).standard_normal((2, 3, 160, 224)).astype(np.float32))])
    assert rep.ok


def test_export_checkpoint_writes_nothing_on_failure(tmp_path):
    from rfdeploy.errors import InputError, ModelFileError

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises((ModelFileError, InputError)):
        list(export_checkpoint(bad, tmp_path / "out.onnx"))
    assert not (tmp_path / "out.onnx").exists()
    assert not list(tmp_path.glob(".out.onnx*"))


def test_export_checkpoint_with_fp16(tmp_path, det_cfg):
    ckpt = save_checkpoint(build(det_cfg), tmp_path / "d.safetensors")
    lines = list(export_checkpoint(ckpt, tmp_path / "d.onnx", fp16=True))
    assert (tmp_path / "d.onnx").is_file() and (tmp_path / "d.fp16.onnx").is_file()
    assert any("verify" in ln for ln in lines)
    assert read_metadata(tmp_path / "d.fp16.onnx")["rfdeploy.precision"] == "fp16"
