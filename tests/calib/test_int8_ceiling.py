"""benchmarks/int8_ceiling.py: the layers it picks and the INT8 models it times are what it says."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repo_scripts import ROOT, load_script  # noqa: E402

ceiling = load_script("benchmarks/int8_ceiling.py")
DETECTOR = ROOT / "rfdeploy/models/weights/refineface_mnet025_default.onnx"


def test_detector_convs_reads_shapes_at_vga():
    rows = ceiling.detector_convs(DETECTOR)
    assert len(rows) > 20
    depthwise = [r for r in rows if r[4] > 1]
    assert depthwise and all(r[4] == r[1] == r[2] for r in depthwise)
    for name, cin, cout, k, groups, h, w, macs in rows:
        assert macs == cout * (cin // groups) * k * k * h * w
    # every map is one of a 640x480 input's pyramid levels (strides 2..128, rounded up)
    pyramid = {(-(-480 // s), -(-640 // s)) for s in (2, 4, 8, 16, 32, 64, 128)}
    sizes = {(r[5], r[6]) for r in rows}
    assert sizes <= pyramid and {(120, 160), (60, 80), (30, 40)} <= sizes


def test_quantized_conv_is_qoperator_and_close_to_fp32(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    shape = (1, 8, 12, 16)
    f32, i8 = tmp_path / "c.onnx", tmp_path / "c_int8.onnx"
    onnx.save(ceiling.conv_model(8, 16, 3, 1, 12, 16, seed=0), str(f32))
    ceiling.quantize_cpu(f32, i8, shape, seed=0)
    ops = {n.op_type for n in onnx.load(str(i8)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = ort.InferenceSession(str(f32), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(i8), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert ref.shape == got.shape == (1, 16, 12, 16)
    # mean error: single outputs may saturate in AVX2's 16-bit U8S8 products on CPUs without VNNI
    assert np.abs(got - ref).mean() < 0.03 * np.abs(ref).mean()
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
