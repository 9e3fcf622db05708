"""FP16 conversion: float32 I/O, decode math kept in float32, accuracy, metadata, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfdeploy.core.errors import BackendUnavailableError, InputError, ModelFileError
from rfdeploy.core.metadata import CONTRACT as METADATA_KEY
from rfdeploy.export.fp16 import convert_fp16, fp32_violations, modelopt_available
from rfdeploy.export.graph_regions import ensure_node_names, find_fp32_region
from tests.precision_fixtures import CONTRACT, TOPK, elem_types, export_toy_detector, export_toy_ranker

SENSITIVE = {"Sigmoid", "Exp", "TopK", "Greater", "Where", "GatherElements", "Sub", "Div"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp16")
    det = export_toy_detector(d / "det.onnx")
    det_all = export_toy_detector(d / "det_all.onnx", topk=False)
    rank = export_toy_ranker(d / "rank.onnx")
    out = {"det": det, "det_all": det_all, "rank": rank}
    for k, p in list(out.items()):
        out[k + "_fp16"] = p.with_name(p.stem + "_fp16.onnx")
        out[k + "_report"] = convert_fp16(p, out[k + "_fp16"], method="onnxconverter")
    return out


def _image(h=96, w=128, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (2, 3, h, w)).astype(np.float32)


def test_io_stays_float32_and_metadata_is_kept(models):
    src, dst = onnx.load(str(models["det"])), onnx.load(str(models["det_fp16"]))
    for vi in [*dst.graph.input, *dst.graph.output]:
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT, vi.name
    meta = {p.key: p.value for p in dst.metadata_props}
    for p in src.metadata_props:
        assert meta[p.key] == p.value
    assert meta["rfdeploy.precision"] == "fp16"
    assert meta[METADATA_KEY] == CONTRACT.to_json()


def test_network_is_fp16_and_decode_is_fp32(models):
    m = onnx.load(str(models["det_fp16"]))
    types = elem_types(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    checked = 0
    for n in m.graph.node:
        if n.op_type in SENSITIVE:
            float_inputs = [t for t in n.input if types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
            assert all(types[t] == TensorProto.FLOAT for t in float_inputs), (n.name, n.op_type)
            checked += bool(float_inputs)
    ops = {n.op_type for n in m.graph.node}
    assert {"Sigmoid", "Exp", "TopK"} <= ops
    assert checked >= 10
    assert models["det_report"].fp32_reasons  # the report says why nodes were kept


def test_fp16_close_to_fp32(models):
    x = _image()
    ref = ort.InferenceSession(str(models["det_all"])).run(None, {"image": x})
    got = ort.InferenceSession(str(models["det_all_fp16"])).run(None, {"image": x})
    for name, a, b in zip(("boxes", "scores"), ref, got):
        assert b.dtype == np.float32
        rel = float(np.abs(a - b).max() / np.abs(a).max())
        print(f"fp16 {name} max rel error {rel:.2e}")
        assert rel < 2e-3, name


def test_fp16_topk_model_runs(models):
    x = _image(128, 96, seed=1)
    ref = ort.InferenceSession(str(models["det"])).run(None, {"image": x})
    got = ort.InferenceSession(str(models["det_fp16"])).run(None, {"image": x})
    assert got[0].shape == (2, TOPK, 4) and got[1].shape == (2, TOPK)
    # near-tied scores may swap order, so compare the sorted score lists
    assert np.abs(np.sort(ref[1]) - np.sort(got[1])).max() < 1e-3


def test_ranker_box_coordinates_stay_fp32(models):
    m = onnx.load(str(models["rank_fp16"]))
    types = elem_types(m)
    boxes_readers = [n for n in m.graph.node if "boxes" in n.input]
    assert boxes_readers
    for n in boxes_readers:  # the raw pixel coordinates are never cast to fp16
        assert n.op_type != "Cast", n.name
    rng = np.random.default_rng(0)
    feeds = {"image": _image(), "boxes": (rng.uniform(0, 1, (2, 20, 5)) * [4000, 3000, 4000, 3000, 1]).astype(np.float32)}
    ref = ort.InferenceSession(str(models["rank"])).run(None, feeds)[0]
    got = ort.InferenceSession(str(models["rank_fp16"])).run(None, feeds)[0]
    assert np.abs(ref - got).max() < 2e-3
    clip = next(n for n in m.graph.node if n.op_type == "Clip")
    assert types[clip.input[0]] == TensorProto.FLOAT


def _tiny_graph(nodes, inits, out_type=TensorProto.FLOAT):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", out_type, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _conv_init(name, cout, cin, seed):
    w = np.random.default_rng(seed).normal(0, 0.3, (cout, cin, 1, 1)).astype(np.float32)
    return numpy_helper.from_array(w, name)


def test_silu_gate_is_fp16_but_head_sigmoid_is_fp32():
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["a"], name="c1"),
        helper.make_node("Sigmoid", ["a"], ["s"], name="gate"),
        helper.make_node("Mul", ["a", "s"], ["silu"], name="silu"),
        helper.make_node("Conv", ["silu", "w2"], ["logits"], name="c2"),
        helper.make_node("Sigmoid", ["logits"], ["y"], name="head_sigmoid"),
    ]
    m = _tiny_graph(nodes, [_conv_init("w1", 4, 3, 0), _conv_init("w2", 1, 4, 1)])
    region = find_fp32_region(m)
    assert "head_sigmoid" in region.nodes
    assert "gate" not in region.nodes and "silu" not in region.nodes and "c2" not in region.nodes
    assert region.entry_tensors == {"logits"}


def test_constant_out_of_fp16_range_keeps_its_node_fp32(tmp_path):
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    small = numpy_helper.from_array(np.array(1e-5, np.float32), "small")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["a"], name="c1"),
        helper.make_node("Mul", ["a", "big"], ["b"], name="scale_up"),
        helper.make_node("Mul", ["b", "small"], ["c"], name="scale_down"),
        helper.make_node("Conv", ["c", "w2"], ["y"], name="c2"),
    ]
    m = _tiny_graph(nodes, [_conv_init("w1", 4, 3, 0), _conv_init("w2", 2, 4, 1), big, small])
    src, dst = tmp_path / "big.onnx", tmp_path / "big_fp16.onnx"
    onnx.save(m, str(src))
    report = convert_fp16(src, dst, method="onnxconverter")
    assert "scale_up" in report.fp32_nodes
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"image": x})[0]
    got = ort.InferenceSession(str(dst)).run(None, {"image": x})[0]
    # 1e5 clamped to 65504 would be off by 35%; kept in fp32 the product stays exact
    assert np.abs(ref - got).max() / np.abs(ref).max() < 5e-3


def test_keep_fp32_nodes_and_ops(models, tmp_path):
    m = onnx.load(str(models["det"]))
    ensure_node_names(m)
    first_conv = next(n.name for n in m.graph.node if n.op_type == "Conv")
    dst = tmp_path / "kept.onnx"
    report = convert_fp16(models["det"], dst, keep_fp32_nodes={first_conv}, keep_fp32_ops={"Relu", "TopK", "Exp"})
    assert first_conv in report.fp32_nodes
    out = onnx.load(str(dst))
    kept = {first_conv} | {n.name for n in out.graph.node if n.op_type == "Relu"}
    assert fp32_violations(onnx.shape_inference.infer_shapes(out), kept) == []
    types = elem_types(out)
    conv = next(n for n in out.graph.node if n.name == first_conv)
    assert types[conv.input[1]] == TensorProto.FLOAT


def test_errors_leave_no_output(tmp_path, models):
    dst = tmp_path / "out.onnx"
    with pytest.raises(InputError):
        convert_fp16(tmp_path / "missing.onnx", dst)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelFileError):
        convert_fp16(junk, dst)
    with pytest.raises(ModelFileError, match="already"):  # fp16 twice loses accuracy silently
        convert_fp16(models["det_fp16"], dst)
    with pytest.raises(ValueError):
        convert_fp16(models["det"], dst, method="bf16")
    with pytest.raises(InputError, match="no_such_node"):
        convert_fp16(models["det"], dst, keep_fp32_nodes={"no_such_node"})
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(modelopt_available(), reason="ModelOpt is installed here")
def test_autocast_without_modelopt_is_a_clear_error(tmp_path, models):
    with pytest.raises(BackendUnavailableError, match="ModelOpt"):
        convert_fp16(models["det"], tmp_path / "x.onnx", method="autocast")
    assert convert_fp16(models["det"], tmp_path / "y.onnx", method="auto").method == "onnxconverter"


@pytest.mark.parametrize("name", ["det_fp16", "rank_fp16"])
def test_fp16_builds_with_tensorrt_rtx(models, name):
    from tests.precision_fixtures import build_with_tensorrt_rtx

    assert build_with_tensorrt_rtx(models[name]) > 0
