"""The exported graph is the inference path only, with the contract inside, and matches PyTorch."""

import json

import numpy as np
import onnx
import pytest
import torch

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.metadata import onnx_metadata as read_metadata
from rfdeploy.export.api import export_checkpoint, verification_inputs
from rfdeploy.export.onnx_export import export_model
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
    assert "Range" not in ops  # no full anchor grid: anchors are built for the selected indices only
    assert [o.name for o in m.graph.output] == ["boxes", "scores"]
    assert [i.name for i in m.graph.input] == ["image"]
    # no FSM / loss parameters: the FSM head's weight shapes appear nowhere in the initializers
    fsm = RefineFaceLoss(det_cfg, use_fsm=True).fsm
    # its conv kernels (4-d); vectors like biases share shapes with other layers by chance
    fsm_shapes = {tuple(p.shape) for p in fsm.parameters() if p.dim() == 4} - {tuple(p.shape) for p in model.parameters()}
    init_shapes = {tuple(i.dims) for i in m.graph.initializer}
    assert fsm_shapes and not (fsm_shapes & init_shapes)
    assert not any("fsm" in i.name or "loss" in i.name for i in m.graph.initializer)
    assert topk_sizes(m) == [det_cfg.candidates]
    assert m.opset_import[0].version >= 17


def topk_sizes(m: onnx.ModelProto) -> list[int]:
    """K of every TopK node (each must be a constant: TensorRT needs it at build time)."""
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    ks = []
    for n in m.graph.node:
        if n.op_type == "TopK":
            assert n.input[1] in consts, f"TopK {n.name} has a non-constant K"
            ks.append(int(consts[n.input[1]].reshape(-1)[0]))
    return ks


def test_k5000_export_is_an_exact_topk_from_tensorrt_sized_topks(tmp_path):
    # K above TensorRT's TopK limit: every TopK <= 3840, and the selected set equals torch.topk
    # over all anchors
    import onnxruntime as ort

    cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=5000)
    torch.manual_seed(0)
    model = build(cfg).eval()
    path = tmp_path / "k5000.onnx"
    export_model(model, path)
    ks = topk_sizes(onnx.load(str(path)))
    assert sum(ks) == 5000 and max(ks) <= 3840
    x = torch.rand(1, 3, 320, 320) * 4 - 2
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, scores = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        all_s = torch.cat(model.decode_levels(model.forward_raw(x))[1], 1)
    ref = torch.topk(all_s, 5000, dim=1).values[0].numpy()
    assert np.allclose(scores[0], ref, atol=1e-5)  # same values, one descending order


def test_exported_selection_takes_the_global_topk_when_high_levels_are_strong(tmp_path):
    # the selection graph alone, fed per-level scores where P5-P7 hold far more strong candidates
    # than an anchor-count quota gave them (58/14/3 of 5000 at this size)
    import onnxruntime as ort

    from rfdeploy.models.refineface import select_candidates

    sizes = [25600, 6400, 1600, 400, 100, 25]

    class Select(torch.nn.Module):
        def forward(self, boxes, scores):
            return select_candidates(list(boxes.split(sizes, 1)), list(scores.split(sizes, 1)), 5000)

    path = tmp_path / "select.onnx"
    torch.onnx.export(Select(), (torch.rand(1, sum(sizes), 4), torch.rand(1, sum(sizes))), str(path), dynamo=False,
                      input_names=["boxes", "scores"], output_names=["b", "s"], opset_version=17)
    assert max(topk_sizes(onnx.load(str(path)))) <= 3840
    g = torch.Generator().manual_seed(1)
    ranks = torch.randperm(sum(sizes), generator=g).float()[None] / sum(sizes)  # distinct scores
    high = sum(sizes[:3])
    ranks[:, high:] += 1.0  # every P5-P7 anchor outranks every low-level one
    boxes = torch.rand(1, sum(sizes), 4, generator=g)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ob, os_ = sess.run(None, {"boxes": boxes.numpy(), "scores": ranks.numpy()})
    ref_s, ref_i = torch.topk(ranks, 5000, dim=1)
    assert int((ref_i >= high).sum()) == sum(sizes[3:]) > 58 + 14 + 3
    assert np.array_equal(os_, ref_s.numpy())
    assert np.array_equal(ob, boxes[0, ref_i[0]][None].numpy())


@pytest.mark.parametrize("shared_tower", [False, True])
def test_stc_filtering_is_in_the_exported_graph(tmp_path, shared_tower):
    # drive the face logits below the STC threshold (1 - p1 > 0.99) for part of the low-level
    # anchors, and let K exceed the anchor count so every anchor's score comes out: the exported
    # graph must zero exactly the anchors torch's STC filters (with separate or shared head towers)
    import onnxruntime as ort

    cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=4000,
                          shared_tower=shared_tower)
    torch.manual_seed(0)
    model = build(cfg).eval()
    with torch.no_grad():
        model.cls_head.pred.bias.fill_(-4.6)  # p about 0.01: the features push anchors either side
    x = torch.rand(1, 3, 128, 160) * 255
    with torch.no_grad():
        raw = model.forward_raw(x)
    n_anchors = sum(a.shape[0] for a in raw["anchors"])
    assert n_anchors < cfg.candidates
    dropped = sum(int(((1 - torch.sigmoid(raw["cls1"][l][0])) > cfg.stc_threshold).sum()) for l in cfg.stc_levels)
    low = sum(raw["anchors"][l].shape[0] for l in cfg.stc_levels)
    assert 0.1 * low < dropped < 0.9 * low  # a real share of the low-level anchors is filtered
    path = tmp_path / "stc.onnx"
    export_model(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, os_ = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        _, ts = model(x)
    assert np.allclose(os_, ts.numpy(), atol=1e-6)
    # zeros in the output: the STC-dropped anchors plus the padding rows, nothing else
    padding = cfg.candidates - n_anchors
    assert int((os_[0] == 0).sum()) == dropped + padding


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
    from rfdeploy.core.errors import BuildError

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
    from rfdeploy.core.errors import InputError, ModelFileError

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


def test_lite_preset_exports_and_matches_torch(tmp_path):
    # the CPU-speed preset (shared towers, separable convs, paper RFE) through the real exporter
    cfg = detector_config("refineface_mnet025_lite", candidates=300)
    torch.manual_seed(0)
    model = build(cfg).eval()
    path = tmp_path / "lite.onnx"
    export_model(model, path)
    rep = verify_onnx(model, path, verification_inputs(cfg.contract))
    assert rep.ok and rep.worst_rel <= 1e-5
