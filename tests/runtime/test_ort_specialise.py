"""OrtRunner's shape-specialised sessions: a repeated input shape gets a session built for it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rfdeploy.models import DEFAULT_DETECTOR_ONNX
from rfdeploy.runtime.backends.ort_runner import OrtRunner


def _image(h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).uniform(-100, 100, (1, 3, h, w)).astype(np.float32)}


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-3)


def test_a_repeated_shape_gets_a_session_with_every_dimension_fixed():
    r = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=True).activate()
    feed = _image(96, 128)
    first = r.infer(feed)  # one sighting: the generic session
    assert r.specialised_shapes == []
    second = r.infer(feed)
    assert r.specialised_shapes == [(("image", (1, 3, 96, 128)),)]
    fixed = r._fixed[r.specialised_shapes[0]]
    assert fixed.get_inputs()[0].shape == [1, 3, 96, 128]  # the override took effect
    assert r.session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    _close(first, second)
    _close(first, r.infer(feed))


def test_specialised_sessions_are_bounded_least_recently_used_first():
    r = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=True).activate()
    shapes = [(64, 64), (64, 96), (96, 64)]
    for h, w in shapes:
        for _ in range(OrtRunner.SPECIALISE_AFTER):
            r.infer(_image(h, w))
    assert len(r.specialised_shapes) == OrtRunner.MAX_SPECIALISED
    assert r.specialised_shapes[-1] == (("image", (1, 3, 96, 64)),)
    assert (("image", (1, 3, 64, 64)),) not in r.specialised_shapes


def test_specialising_can_be_turned_off(monkeypatch):
    r = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=False).activate()
    for _ in range(3):
        r.infer(_image(64, 64))
    assert r.specialised_shapes == []
    monkeypatch.setenv("RFDEPLOY_ORT_SPECIALISE", "0")
    assert not OrtRunner(DEFAULT_DETECTOR_ONNX).specialise
    monkeypatch.delenv("RFDEPLOY_ORT_SPECIALISE")
    assert OrtRunner(DEFAULT_DETECTOR_ONNX).specialise


def _relu_model(path, dims) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("dims", [[None, 3], [2, 3]], ids=["unnamed-dynamic", "static"])
def test_models_without_named_free_dimensions_keep_one_session(tmp_path, dims):
    path = tmp_path / "relu.onnx"
    _relu_model(path, dims)
    r = OrtRunner(path, rfdeploy_model=False, specialise=True).activate()
    assert not r.specialise
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(r.infer({"x": x})["y"], np.maximum(x, 0))
    assert r.specialised_shapes == []


def test_concurrent_callers_get_the_same_outputs_as_one_caller():
    r = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=True).activate()
    feeds = [_image(64 + 32 * (i % 3), 96, seed=i) for i in range(9)]
    ref = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=False).activate()
    expected = [ref.infer(f) for f in feeds]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(r.infer, feeds + feeds))
    for e, g in zip(expected + expected, got):
        _close(e, g)
    assert r.specialised_shapes  # each of the three shapes came at least twice


def test_a_shape_that_cannot_be_specialised_keeps_the_generic_session(monkeypatch):
    from rfdeploy.core.errors import ModelFileError

    r = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=True).activate()
    feed = _image(64, 64)
    expected = r.infer(feed)

    def refuse(*args, **kwargs):
        raise ModelFileError("onnxruntime cannot build this graph for a fixed shape")

    monkeypatch.setattr(r, "_session", refuse)
    for _ in range(3):
        _close(expected, r.infer(feed))
    assert r.specialised_shapes == []


def test_large_feeds_keep_the_generic_session(monkeypatch):
    monkeypatch.setattr(OrtRunner, "MAX_SPECIALISED_ELEMENTS", 3 * 64 * 64)
    r = OrtRunner(DEFAULT_DETECTOR_ONNX, specialise=True).activate()
    for _ in range(3):
        r.infer(_image(64, 96))  # one element over the limit per row: stays generic
        r.infer(_image(64, 64))
    assert r.specialised_shapes == [(("image", (1, 3, 64, 64)),)]
