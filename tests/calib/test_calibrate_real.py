"""INT8 Q/DQ calibration of the real exported RefineFace detector and CRFace ranker (small widths)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rfdeploy.calib import calibrate
from rfdeploy.calib.calibrate import synthetic_boxes, synthetic_candidates
from rfdeploy.calib.qdq import qdq_problems
from rfdeploy.core.boxes import pack_candidates
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.preprocess import Letterbox, preprocess
from rfdeploy.export.graph_regions import ensure_node_names, find_fp32_region
from tests.real_models import (
    ASTRONAUT,
    GRACE_HOPPER,
    RANKER_BOXES,
    photo,
    small_real_models,
)

IMAGES = [ASTRONAUT, GRACE_HOPPER]


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    det, rank = small_real_models(tmp_path_factory)
    d = tmp_path_factory.mktemp("int8")
    out = {"det": det, "rank": rank}
    for k in ("det", "rank"):
        out[k + "_report"] = calibrate(out[k], IMAGES, d / f"{k}.int8.onnx", num=2, calib_size=128)
    return out


def _region(path):
    m = onnx.load(str(path))
    ensure_node_names(m)
    return find_fp32_region(onnx.shape_inference.infer_shapes(m)).nodes


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda z: (z[:, 2:] - z[:, :2]).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None] - inter)


@pytest.mark.parametrize("kind", ["det", "rank"])
def test_int8_model_is_acceptable_and_keeps_metadata(int8, kind):
    r = int8[kind + "_report"]
    m = onnx.load(r.dst)
    onnx.checker.check_model(m)
    assert qdq_problems(m, _region(int8[kind])) == []
    assert r.quantized_nodes > 0
    src = {p.key: p.value for p in onnx.load(str(int8[kind])).metadata_props}
    dst = {p.key: p.value for p in m.metadata_props}
    assert {k: dst[k] for k in src if k != "rfdeploy.precision"} == {k: v for k, v in src.items() if k != "rfdeploy.precision"}
    assert dst["rfdeploy.precision"] == "int8"


def test_detector_decode_reads_no_quantized_tensor(int8):
    m = onnx.load(int8["det_report"].dst)
    producer = {t: n for n in m.graph.node for t in n.output}
    seen = set()
    for n in m.graph.node:
        if n.op_type in ("Sigmoid", "Exp", "TopK"):
            seen.add(n.op_type)
            assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear" for t in n.input), n.name
    assert seen == {"Sigmoid", "Exp", "TopK"}


def test_shared_head_weight_keeps_its_own_scale(int8):
    """The class weight read by every classifier Conv (one per pyramid level; the STC levels run both
    steps in one call): its per-channel scale is max|w| / 127.

    onnxruntime's QDQ quantizer enlarges a weight's scale so an int32 bias fits ``input_scale *
    weight_scale``, even when biases stay float; the level with the smallest input range then set
    the scale of the one shared weight (857, every value rounded to 0). Calibration turns that off."""
    m = onnx.load(int8["det_report"].dst)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8["det"])).graph.initializer}["cls_head.pred.weight"]
    readers = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "cls_head.pred.weight_quantized"]
    assert len(readers) == 1
    scale = consts[readers[0].input[1]]
    np.testing.assert_allclose(scale, np.abs(w).reshape(w.shape[0], -1).max(1) / 127, rtol=1e-6)
    assert np.abs(consts["cls_head.pred.weight_quantized"]).max() == 127
    producer = {t: n for n in m.graph.node for t in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.input[1] in readers[0].output]
    assert len(convs) == 6  # P2-P7; the STC levels' two steps share one call per level


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_detector_int8_agrees_with_fp32(int8, target, tmp_path):
    x, _ = preprocess(photo(), PreprocessContract())
    rb, rs = (a[0] for a in _run(int8["det"], {"image": x}))
    if target == "tensorrt":
        path = int8["det_report"].dst
    else:
        path = calibrate(int8["det"], IMAGES, tmp_path / "det.cpu.onnx", num=2, calib_size=128, target="cpu").dst
    ib, is_ = (a[0] for a in _run(path, {"image": x}))
    # int8 moves scores enough to reorder near-ties: pair each of the fp32 top 20 with its best-IoU int8 box
    top = np.argsort(-rs)[:20]
    iou = _iou(rb[top], ib)
    pick = iou.argmax(1)
    score_err = float(np.abs(is_[pick] - rs[top]).max())
    print(f"int8 detector: min IoU {iou.max(1).min():.3f}, scores max abs {score_err:.3g}")
    assert iou.max(1).min() > 0.7 and score_err < 0.05  # bounds from the default detector at VGA (scores ~0.03)


def test_ranker_synthetic_boxes_are_packed_candidates():
    lb = Letterbox(scale=0.5, image_size=(640, 480), input_size=(320, 256))
    rows = synthetic_boxes(lb, 100, seed=3)
    boxes, scores = synthetic_candidates(640, 480, 100, seed=3)
    expected, order = pack_candidates(boxes, scores, 640, 480, 100)
    np.testing.assert_array_equal(rows, expected)
    k = len(order)
    assert 25 <= k <= 100 and rows.shape == (100, 5) and rows.dtype == np.float32
    real = rows[:k]
    assert np.all(np.diff(real[:, 4]) <= 0) and np.all(real[:, 4] > 0)  # sorted by score, descending
    assert np.all(real[:, :2] >= 0) and np.all(real[:, :2] <= 1)  # normalised x, y
    assert np.all(real[:, 2:4] >= 0) and np.all(real[:, 0] + real[:, 2] <= 1 + 1e-6)  # w, h inside the image
    assert not rows[k:].any()  # zero padding


def test_ranker_int8_agrees_with_fp32(int8):
    r = int8["rank_report"]
    m = onnx.load(r.dst)
    # the box branch (BPN) reads the normalised candidates and is kept in float
    producer = {t: n for n in m.graph.node for t in n.output}
    bpn = [n for n in m.graph.node if n.name.startswith("/bpn/") and n.op_type == "Conv"]
    assert bpn and all(producer.get(n.input[0]) is None or producer[n.input[0]].op_type != "DequantizeLinear"
                       for n in bpn)
    rgb = photo()
    x, _ = preprocess(rgb, PreprocessContract())
    rb, rs = (a[0] for a in _run(int8["det"], {"image": x}))
    packed, order = pack_candidates(rb, rs, rgb.shape[1], rgb.shape[0], RANKER_BOXES)
    feed = {"image": preprocess(rgb, PreprocessContract(resize="long_side", resize_to=320))[0], "boxes": packed[None]}
    ref, got = _run(int8["rank"], feed)[0], _run(r.dst, feed)[0]
    err = float(np.abs(ref - got).max())
    print(f"int8 ranker: scores max abs {err:.3g}")
    assert err < 5e-3  # measured 1.4e-3
    assert not got[0, len(order):].any()

