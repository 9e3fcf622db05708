"""FP16 conversion of the real exported RefineFace detector and CRFace ranker (small widths).

Validity (checker + strict type inference), float32 where the region analysis says so, agreement
with fp32 on a photo, metadata, and a TensorRT-RTX build of the fp16 files (CPU builder).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from rfdeploy.core.boxes import pack_candidates
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.preprocess import preprocess
from rfdeploy.export.fp16 import convert_fp16
from rfdeploy.export.precision_io import verify_model
from rfdeploy.export.verify import compare_candidates
from tests.precision_fixtures import elem_types
from tests.real_models import RANKER_BOXES, photo, small_real_models

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    det, rank = small_real_models(tmp_path_factory)
    out = {"det": det, "rank": rank}
    for k in ("det", "rank"):
        dst = out[k].with_name(f"{k}.fp16.onnx")
        out[k + "_report"] = convert_fp16(out[k], dst, method="onnxconverter")
        out[k + "_fp16"] = dst
    return out


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("kind", ["det", "rank"])
def test_valid_graph_float32_io_and_metadata(converted, kind):
    m = onnx.load(str(converted[kind + "_fp16"]))
    verify_model(m, "test")  # checker + strict shape/type inference; raises on any mismatch
    for vi in [*m.graph.input, *m.graph.output]:
        assert vi.type.tensor_type.elem_type == F32, vi.name
    src, dst = _meta(converted[kind]), _meta(converted[kind + "_fp16"])
    assert {k: dst[k] for k in src if k != "rfdeploy.precision"} == {k: v for k, v in src.items() if k != "rfdeploy.precision"}
    assert dst["rfdeploy.precision"] == "fp16"
    # most of the network really is fp16 (not a float32 graph with a few casts)
    types = elem_types(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert sum(types[n.input[0]] == F16 for n in convs) > 0.5 * len(convs)


def test_detector_decode_stays_float32(converted):
    m = onnx.load(str(converted["det_fp16"]))
    types = elem_types(m)
    seen = set()
    for n in m.graph.node:
        if n.op_type in ("Sigmoid", "Exp", "TopK"):
            seen.add(n.op_type)
            assert types[n.input[0]] == F32, (n.op_type, n.name)
    assert seen == {"Sigmoid", "Exp", "TopK"}


def test_ranker_box_branch_and_residual_stay_float32(converted):
    m = onnx.load(str(converted["rank_fp16"]))
    types = elem_types(m)
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    bpn = [n for n in m.graph.node if n.name.startswith("/bpn/") and n.op_type == "Conv"]
    assert bpn and all(types[t] == F32 for n in bpn for t in n.input if t)
    clips = [n for n in m.graph.node if n.op_type == "Clip" and any(c.op_type == "Mul" for c in consumers[n.output[0]])]
    assert len(clips) == 1 and types[clips[0].input[0]] == F32
    # the image branch is fp16
    assert any(types[n.input[0]] == F16 for n in m.graph.node if n.name.startswith("/backbone/") and n.op_type == "Conv")


def _detector_candidates(path, x):
    b, s = _run(path, {"image": x})
    return b[0], s[0]


def test_detector_fp16_agrees_with_fp32(converted):
    x, _ = preprocess(photo(), PreprocessContract())
    rb, rs = _detector_candidates(converted["det"], x)
    fb, fs = _detector_candidates(converted["det_fp16"], x)
    boxes, scores = compare_candidates(fb, fs, rb, rs, min_score=0.05)
    print(f"fp16 detector: boxes max abs {boxes.max_abs:.3g} px, scores max abs {scores.max_abs:.3g}")
    # measured: boxes 6e-5 px, scores 7e-5 (input 320x320); the default detector at VGA: 0.06 px, 9e-4
    assert boxes.max_abs < 0.01 and scores.max_abs < 1e-3


def test_ranker_fp16_agrees_with_fp32(converted):
    rgb = photo()
    x, _ = preprocess(rgb, PreprocessContract())
    rb, rs = _detector_candidates(converted["det"], x)
    packed, order = pack_candidates(rb, rs, rgb.shape[1], rgb.shape[0], RANKER_BOXES)
    feed = {"image": preprocess(rgb, PreprocessContract(resize="long_side", resize_to=320))[0], "boxes": packed[None]}
    ref = _run(converted["rank"], feed)[0]
    got = _run(converted["rank_fp16"], feed)[0]
    assert np.abs(ref - packed[:, 4]).max() > 1e-3  # the residual is not zero: the image branch counts
    err = float(np.abs(ref - got).max())
    print(f"fp16 ranker: scores max abs {err:.3g}")
    assert err < 5e-4  # measured 7e-6
    assert not got[0, len(order):].any()  # padded rows stay 0


@pytest.mark.slow
def test_fp16_files_build_with_tensorrt_rtx(converted, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed: no TensorRT-RTX engine can be built")
    from rfdeploy.engines.build import build_engine
    from rfdeploy.engines.profiles import specs_from_cli

    det = build_engine(converted["det_fp16"], tmp_path / "det.engine",
                       specs_from_cli(["1x3x64x64"], ["1x3x128x128"], ["1x3x256x256"]), prefer_backend="tensorrt_rtx")
    assert det.precision == "fp16" and (tmp_path / "det.engine").stat().st_size > 0
    rank = build_engine(converted["rank_fp16"], tmp_path / "rank.engine",
                        specs_from_cli(["1x3x64x64"], ["1x3x128x128"], ["1x3x256x256"]), prefer_backend="tensorrt_rtx")
    assert rank.precision == "fp16"
