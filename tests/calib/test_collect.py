"""Streaming range collection: histogram merging, thresholds, memory estimate and refusal, streaming."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest

from rfdeploy.calib import collect
from rfdeploy.calib.collect import (
    MemoryEstimate,
    RangeCollector,
    RunningHistogram,
    entropy_threshold,
    percentile_threshold,
)
from rfdeploy.core.errors import BuildError, InputError


def test_growing_histogram_equals_one_histogram_at_the_final_range():
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, 20000).astype(np.float32) for s in (0.01, 0.5, 3.0, 0.2, 40.0)]
    h = RunningHistogram(bins=256)
    for b in batches:
        h.update(b, float(np.abs(b).max()))
    everything = np.concatenate(batches)
    assert h.r >= np.abs(everything).max() and h.counts.shape == (512,)  # the bin count never grows
    direct, _ = np.histogram(everything, bins=512, range=(-h.r, h.r))
    # merged bins are unions of earlier bins (edges align), so counts are exact up to edge rounding
    assert np.abs(h.counts - direct).sum() <= 4
    assert h.counts.sum() == everything.size


def test_zeros_before_any_range_are_kept():
    h = RunningHistogram(bins=128)
    h.update(np.zeros(100, np.float32), 0.0)
    h.update(np.array([1.0, -1.0], np.float32), 1.0)
    mag, width = h.magnitude()
    assert mag.sum() == 102 and mag[0] == 100 and width == pytest.approx(1.0 / 128)


def test_percentile_threshold_on_a_known_distribution():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 200_000).astype(np.float32)
    h = RunningHistogram()
    h.update(x, float(np.abs(x).max()))
    mag, w = h.magnitude()
    assert percentile_threshold(mag, w, 90.0) == pytest.approx(0.9, abs=2 * w + 0.01)
    assert percentile_threshold(mag, w, 100.0) == pytest.approx(np.abs(x).max(), abs=w)


def test_entropy_clips_outliers_but_not_relu_outputs_to_nothing():
    rng = np.random.default_rng(2)
    gauss = rng.normal(0, 1, 300_000).astype(np.float32)
    with_outliers = np.concatenate([gauss, np.array([60.0, -45.0], np.float32)])
    h = RunningHistogram()
    h.update(with_outliers, 60.0)
    t = entropy_threshold(*h.magnitude())
    assert 2.0 < t < 20.0  # far below the outlier, well above the bulk
    # ReLU output: most values exactly zero; the threshold must still cover the positive bulk
    relu = np.maximum(gauss, 0) * (rng.uniform(size=gauss.size) < 0.3)
    h2 = RunningHistogram()
    h2.update(relu, float(relu.max()))
    t2 = entropy_threshold(*h2.magnitude())
    assert 1.5 < t2 <= relu.max() + 1e-6


@pytest.mark.parametrize("method", ["max", "percentile", "entropy"])
def test_collector_symmetric_and_unsigned_ranges(method):
    rng = np.random.default_rng(3)
    relu = np.maximum(rng.normal(0, 1, (2, 8, 32, 32)), 0).astype(np.float32)
    signed = rng.normal(0, 1, (2, 8, 32, 32)).astype(np.float32)
    for symmetric in (True, False):
        c = RangeCollector(["r", "s"], method, symmetric=symmetric, percentile=99.9)
        c.update("r", relu)
        c.update("s", signed)
        c.end_batch()
        r = c.ranges()
        if symmetric:
            assert r["r"][0] == -r["r"][1] and r["s"][0] == -r["s"][1]
        else:
            assert r["r"][0] == 0.0  # unsigned activations keep the full uint8 range for ReLU outputs
        assert 0 < r["r"][1] <= relu.max() + 1e-6
        if method == "max":
            assert r["r"][1] == pytest.approx(relu.max())


def test_collector_refuses_non_finite_values():
    c = RangeCollector(["t"], "max", symmetric=True)
    with pytest.raises(BuildError, match="non-finite"):
        c.update("t", np.array([1.0, np.nan], np.float32))


def test_sampling_keeps_exact_extremes():
    c = RangeCollector(["t"], "percentile", symmetric=False, sample_size=1000)
    x = np.zeros(100_000, np.float32)
    x[12345] = 7.0  # not on the sampling stride
    x[54321] = -3.0
    c.update("t", x)
    c.end_batch()
    assert c.state["t"].lo == -3.0 and c.state["t"].hi == 7.0
    assert c.state["t"].hist.counts.sum() <= 1001


def _toy_model(path):
    """Conv -> Relu -> Conv with a dynamic spatial size."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"], name="r1"),
        helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1], name="c2"),
    ]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return m


def test_max_ranges_equal_onnxruntimes_minmax_calibrator(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationDataReader, MinMaxCalibrater

    m = _toy_model(tmp_path / "toy.onnx")
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 24, 24)).astype(np.float32)} for _ in range(3)]
    tensors = collect.tensors_to_calibrate(m, ("Conv",))
    assert sorted(tensors) == ["a", "b", "x", "y"]
    ours = collect.collect_ranges(m, tensors, iter(feeds), "max", symmetric=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    cal = MinMaxCalibrater(str(tmp_path / "toy.onnx"), ["Conv"], str(tmp_path / "aug.onnx"))
    cal.augment_graph()
    cal.create_inference_session()
    cal.collect_data(Reader())
    theirs = cal.compute_data()
    for t in tensors:
        lo, hi = theirs[t].range_value
        assert ours[t] == pytest.approx((float(np.ravel(lo)[0]), float(np.ravel(hi)[0])), rel=1e-6, abs=1e-7), t


def test_batches_are_streamed_not_kept(tmp_path):
    m = _toy_model(tmp_path / "toy.onnx")
    rng = np.random.default_rng(6)
    refs: list[weakref.ref] = []

    def feeds():
        for _ in range(4):
            gc.collect()
            # at most one batch is alive: every batch but the one the collector is still
            # holding (its loop variable, until the next arrives) was dropped
            assert all(r() is None for r in refs[:-1])
            x = rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
            refs.append(weakref.ref(x))
            yield {"x": x}
            del x

    tensors = collect.tensors_to_calibrate(m, ("Conv",))
    ranges = collect.collect_ranges(m, tensors, feeds(), "percentile", symmetric=True)
    assert len(refs) == 4 and set(ranges) == set(tensors)


def test_estimate_refuses_before_running(tmp_path):
    m = _toy_model(tmp_path / "toy.onnx")
    est = MemoryEstimate(batch_bytes=6 << 30, state_bytes=1 << 20, base_bytes=1 << 30, budget_bytes=4 << 30)
    assert not est.fits and "budget 4.0 GB" in est.describe()

    def never():
        raise AssertionError("no batch may be made once the estimate is refused")
        yield  # pragma: no cover

    with pytest.raises(InputError, match="would need about"):
        collect.collect_ranges(m, ["a"], never(), "max", symmetric=True, estimate=est)


def test_probe_extrapolates_activation_bytes(tmp_path):
    m = _toy_model(tmp_path / "toy.onnx")
    tensors = collect.tensors_to_calibrate(m, ("Conv",))
    sess = collect._session(collect.augmented_model(m, tensors))

    def feed(side):
        return {"x": np.zeros((1, 3, side, side), np.float32)}

    est = collect.probe_batch_bytes(sess, feed, 96, (16, 32))
    actual = sum(o.nbytes for o in sess.run(None, feed(96)))
    assert est == pytest.approx(actual, rel=0.02)
