"""SCRFD adapter: distance decoding checked on a tiny ONNX built here (SCRFD's output signature,
known values, a fixed-size Resize like the real export), the fixed-size rewrite, the preparation
script, and the real SCRFD-2.5G file when $RFDEPLOY_SCRFD_ONNX names it (it is licensed for
non-commercial research only, so it is never part of the repository or of the shared data)."""

import importlib.util
import io
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from shared_data import SHARED_DATA

from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.onnxinfo import ModelSignature, TensorInfo, read_signature
from rfdeploy.core.preprocess import Letterbox
from rfdeploy.runtime.adapters import (
    ADAPTERS,
    CenterFaceAdapter,
    OnnxDetector,
    RetinaFaceAdapter,
    SCRFDAdapter,
    require_trainable,
    resize_sizes_to_scales,
    resolve_adapter,
)

ROOT = Path(__file__).resolve().parents[2]
FIXED = 64  # the tiny export's placeholder input size, like SCRFD's 640

# Per anchor: distances (left, top, right, bottom) in stride units.
DIST = [[1.0, 0.5, 2.0, 1.5], [0.5, 0.25, 0.75, 1.0]]


def scrfd_like(path: Path) -> Path:
    """A fixed 1x3x64x64 model with SCRFD's outputs (score_s [1,N,1], bbox_s [1,N,4], kps_s [1,N,10]
    per stride 8/16/32, two anchors per point, rows = (point row-major, anchor)).

    Level features are the input average-pooled over s x s cells; stride 16 also adds the stride-32
    map upsampled by a Resize with fixed ``sizes`` (as the real export's FPN does). Scores:
    stride 8, anchor 0: sigmoid(10 * red); stride 16, anchor 0: sigmoid(10 * green);
    stride 32, anchor 1: sigmoid(10 * blue); every other anchor sigmoid(-10). Distances: DIST.
    """
    inits = [
        numpy_helper.from_array(np.zeros(0, np.float32), "roi"),  # also the empty scales, as in SCRFD
        numpy_helper.from_array(np.array([1, 3, FIXED // 16, FIXED // 16], np.int64), "up_sizes"),
    ]
    nodes = [
        helper.make_node("AveragePool", ["input.1"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s])
        for s in (8, 16, 32)
    ]
    nodes += [
        helper.make_node("Resize", ["p32", "roi", "roi", "up_sizes"], ["p32_up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Add", ["p16", "p32_up"], ["f16"]),
    ]
    feature = {8: "p8", 16: "f16", 32: "p32"}
    score_w = {8: ([[10, 0, 0], [0, 0, 0]], [0, -10]),
               16: ([[0, 10, 0], [0, 0, 0]], [0, -10]),
               32: ([[0, 0, 0], [0, 0, 10]], [-10, 0])}
    for s in (8, 16, 32):
        heads = [("score", 2, *score_w[s], 1),
                 ("bbox", 8, np.zeros((8, 3)), np.ravel(DIST), 4),
                 ("kps", 20, np.zeros((20, 3)), np.zeros(20), 10)]
        for kind, ch, w, b, per in heads:
            name = f"{kind}_{s}"
            inits += [
                numpy_helper.from_array(np.asarray(w, np.float32).reshape(ch, 3, 1, 1), f"{name}_w"),
                numpy_helper.from_array(np.asarray(b, np.float32), f"{name}_b"),
                numpy_helper.from_array(np.array([1, -1, per], np.int64), f"{name}_shape"),
            ]
            raw = f"{name}_raw" if kind == "score" else name
            nodes += [
                helper.make_node("Conv", [feature[s], f"{name}_w", f"{name}_b"], [f"{name}_conv"]),
                helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [raw]),
            ]
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [raw], [name]))
    outputs = [
        helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [1, 2 * (FIXED // s) ** 2, per])
        for kind, per in (("score", 1), ("bbox", 4), ("kps", 10)) for s in (8, 16, 32)
    ]
    graph = helper.make_graph(
        nodes, "scrfd_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, FIXED, FIXED])], outputs, inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def scene(height: int = 96) -> np.ndarray:
    """64 wide: a red 8x8 block in stride-8 cell (row 2, col 5), a green 16x16 block in stride-16
    cell (4, 1), a blue 32x32 block in stride-32 cell (1, 1); black elsewhere."""
    rgb = np.zeros((height, 64, 3), np.uint8)
    rgb[16:24, 40:48, 0] = 255
    rgb[64:80, 16:32, 1] = 255
    rgb[32:64, 32:64, 2] = 255
    return rgb


# Points at (col * s, row * s); box = point - (l, t) * s, point + (r, b) * s.
EXPECTED_BOXES = np.array([
    [40 - 8, 16 - 4, 40 + 16, 16 + 12],      # stride 8, point (40, 16), anchor 0
    [16 - 16, 64 - 8, 16 + 32, 64 + 24],     # stride 16, point (16, 64), anchor 0
    [32 - 16, 32 - 8, 32 + 24, 32 + 32],     # stride 32, point (32, 32), anchor 1
], np.float32)
ON = 127.5 / 128  # a 255 pixel after (x - 127.5) / 128; a 0 pixel is -ON


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return scrfd_like(tmp_path_factory.mktemp("scrfd") / "scrfd_like.onnx")


def by_row(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(boxes.T[::-1])
    return boxes[order], scores[order]


def test_decodes_distances_from_anchor_points_at_every_stride(tiny):
    det = OnnxDetector(tiny)  # recognised by its outputs; its fixed 64x64 input rewritten on load
    assert isinstance(det.adapter, SCRFDAdapter) and det.adapter.strides == (8, 16, 32)
    boxes, scores = det.detect_candidates(scene())  # 96 x 64: not the export's size
    got_boxes, got_scores = by_row(boxes, scores)
    want_boxes, _ = by_row(EXPECTED_BOXES, np.zeros(3))
    np.testing.assert_allclose(got_boxes, want_boxes, atol=1e-4)
    # stride 16 = its own cell (all green) + the upsampled stride-32 cell (a quarter green)
    want = {(0, 56): sigmoid(10 * (ON + (0.25 - 0.75) * ON)), (16, 24): sigmoid(10 * ON), (32, 12): sigmoid(10 * ON)}
    for box, score in zip(got_boxes, got_scores):
        assert score == pytest.approx(want[(int(box[0]), int(box[1]))], abs=1e-5)
    assert np.all(np.diff(scores) <= 0)


def test_input_is_padded_to_the_largest_stride(tiny):
    # padding is the mean colour, 0 after normalisation: the toy scores padded cells sigmoid(0)
    det = OnnxDetector(tiny, adapter="scrfd", score_threshold=0.6)
    assert det.adapter.contract.pad_multiple == 32
    assert (det.adapter.contract.mean, det.adapter.contract.std) == ((127.5,) * 3, (128.0,) * 3)
    tensor, letterbox = det.adapter.preprocess(scene(90))
    assert tensor.shape == (1, 3, 96, 64) and letterbox.input_size == (64, 96)
    boxes, _ = det.detect_candidates(scene(90))  # 90 rows would not pass the stride-16 Add unpadded
    np.testing.assert_allclose(by_row(boxes, np.zeros(len(boxes)))[0], by_row(EXPECTED_BOXES, np.zeros(3))[0],
                               atol=1e-4)


def test_threshold_and_cap(tiny):
    boxes, scores = OnnxDetector(tiny, adapter="scrfd", max_candidates=2).detect_candidates(scene())
    assert len(scores) == 2 and scores.min() > 0.999  # the two strongest; the stride-16 one is 0.993
    _, scores = OnnxDetector(tiny, adapter="scrfd", score_threshold=0.995).detect_candidates(scene())
    assert len(scores) == 2


def test_fixed_export_needs_the_rewrite(tiny):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 96, 64), np.float32)
    with pytest.raises(Exception):  # the export as is refuses any other size
        sess.run(None, {"input.1": x})
    model = onnx.load(str(tiny))
    assert resize_sizes_to_scales(model) == 1
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    scales = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == resize.input[2])
    np.testing.assert_array_equal(scales, [1, 1, 2, 2])
    assert len(resize.input) == 3 and "up_sizes" not in {i.name for i in model.graph.initializer}
    assert resize_sizes_to_scales(model) == 0  # nothing left to rewrite


def test_resize_with_computed_sizes_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "roi", "roi", "sizes"], ["y"], mode="nearest")], "computed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
         helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(0, np.float32), "roi")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(ModelFileError, match="not known constants"):
        resize_sizes_to_scales(model)


def _sig(outputs: dict[str, tuple]) -> ModelSignature:
    return ModelSignature((TensorInfo("input.1", (1, 3, 640, 640), "float32"),),
                          tuple(TensorInfo(n, s, "float32") for n, s in outputs.items()))


def test_recognition_and_names(tiny):
    assert ADAPTERS["scrfd"] is SCRFDAdapter
    sig = read_signature(onnx.load(str(tiny)))
    assert SCRFDAdapter.recognises(sig)
    assert not RetinaFaceAdapter.recognises(sig) and not CenterFaceAdapter.recognises(sig)
    assert isinstance(resolve_adapter(None, sig), SCRFDAdapter)
    assert not SCRFDAdapter.recognises(_sig({"loc": (1, 100, 4), "conf": (1, 100, 2)}))
    # five strides (as the larger SCRFD variants use), batch-free 2-D outputs
    five = _sig({f"{k}_{s}": (None, c) for s in (8, 16, 32, 64, 128) for k, c in (("score", 1), ("bbox", 4))})
    adapter = resolve_adapter("scrfd", five)
    assert adapter.strides == (8, 16, 32, 64, 128) and adapter.contract.pad_multiple == 128


@pytest.mark.parametrize("outputs, why", [
    ({"score_8": (1, 12800, 1)}, "no bbox_8"),
    ({"score_8": (1, 12800, 1), "bbox_8": (1, 12800, 5)}, "bbox with 5 columns"),
    ({"score_8": (1, 12800, 2), "bbox_8": (1, 12800, 4)}, "scores with 2 columns"),
    ({"scores": (1, 12800, 1), "bbox_8": (1, 12800, 4)}, "no score_S names"),
])
def test_wrong_signatures_are_model_file_errors(outputs, why):
    with pytest.raises(ModelFileError, match="not an SCRFD model"):
        resolve_adapter("scrfd", _sig(outputs))


def test_outputs_that_do_not_fit_the_input_size():
    adapter = SCRFDAdapter()
    adapter.check(_sig({"score_8": (1, None, 1), "bbox_8": (1, None, 4)}))
    lb = Letterbox(scale=1.0, image_size=(64, 64), input_size=(64, 64))
    good = {"score_8": np.full((1, 128, 1), 0.5, np.float32), "bbox_8": np.ones((1, 128, 4), np.float32)}
    assert len(adapter.decode(good, lb)[1]) == 128
    bad = {"score_8": np.full((1, 100, 1), 0.5, np.float32), "bbox_8": np.ones((1, 100, 4), np.float32)}
    with pytest.raises(ModelFileError, match="do not fit a 64x64 input"):
        adapter.decode(bad, lb)
    with pytest.raises(RuntimeError, match="check"):
        SCRFDAdapter().decode(good, lb)


def test_evaluation_only_flag():
    assert SCRFDAdapter.evaluation_only
    assert not RetinaFaceAdapter.evaluation_only and not CenterFaceAdapter.evaluation_only
    with pytest.raises(InputError, match="evaluation only: it cannot label training data"):
        require_trainable(SCRFDAdapter(), "label training data")
    require_trainable(RetinaFaceAdapter(), "label training data")  # allowed: returns


# ------------------------------------------------------------------------------------------
# The preparation script (benchmarks/prepare_scrfd.py) on the tiny export


def _script():
    spec = importlib.util.spec_from_file_location("prepare_scrfd", ROOT / "benchmarks" / "prepare_scrfd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_script_from_a_source_archive(tiny, tmp_path, capsys):
    archive = tmp_path / "scrfd-0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny, arcname="scrfd-0.0/models/scrfd.onnx")
    out = tmp_path / "dynamic.onnx"
    prepare = _script()
    assert prepare.main([str(archive), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1088x1920: runs" in printed
    model = onnx.load(str(out))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [1, 3, "height", "width"]
    assert "non-commercial" in {p.key: p.value for p in model.metadata_props}["licence"]
    boxes, _ = OnnxDetector(out, adapter="scrfd").detect_candidates(scene())
    np.testing.assert_allclose(by_row(boxes, np.zeros(3))[0], by_row(EXPECTED_BOXES, np.zeros(3))[0], atol=1e-4)

    assert prepare.main([str(archive), "-o", str(out)]) == 2  # exists
    assert prepare.main([str(archive), "-o", str(ROOT / "scrfd.onnx")]) == 2  # inside the repository
    assert not (ROOT / "scrfd.onnx").exists()
    assert prepare.main([str(out), "-o", str(tmp_path / "again.onnx")]) == 3  # already rewritten
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("scrfd-0.0/README.md")
        tar.addfile(info, io.BytesIO(b""))
    assert prepare.main([str(empty), "-o", str(tmp_path / "none.onnx")]) == 2
    assert "holds no models/scrfd.onnx" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# The real SCRFD-2.5G


def real_scrfd() -> Path:
    path = os.environ.get("RFDEPLOY_SCRFD_ONNX")
    if not path:
        pytest.skip("RFDEPLOY_SCRFD_ONNX is not set: the SCRFD-2.5G file (non-commercial licence) is not "
                    "shipped; make it with benchmarks/prepare_scrfd.py and point the variable at it")
    if not Path(path).is_file():
        pytest.skip(f"RFDEPLOY_SCRFD_ONNX={path} does not exist")
    return Path(path)


def test_real_scrfd_signature_and_sizes():
    det = OnnxDetector(real_scrfd())
    assert det.name == "scrfd" and det.adapter.strides == (8, 16, 32)
    x = np.zeros((1, 3, 480, 640), np.float32)
    out = dict(zip(det.output_names, det.session.run(det.output_names, {det.input_name: x})))
    assert [out[f"score_{s}"].shape[1] for s in (8, 16, 32)] == [2 * 60 * 80, 2 * 30 * 40, 2 * 15 * 20]


def test_real_scrfd_finds_the_dev_faces():
    from PIL import Image

    from rfdeploy.eval.ap import evaluate, load_annotations

    path = real_scrfd()
    if SHARED_DATA is None:
        pytest.skip("shared data (../shared/data or $RFDEPLOY_SHARED_DATA) not present")
    dev = SHARED_DATA / "realfaces" / "dev"
    # the photos of at most 1.2 MP (5 photos, 14 faces) keep the test to seconds
    gt = [g for g in load_annotations(dev / "annotations.json")
          if np.prod(Image.open(dev / g.file).size) <= 1_200_000]
    assert sum(int((~g.ignore).sum()) for g in gt) >= 10
    det = OnnxDetector(path, adapter="scrfd")
    preds = {g.file: det.detect(np.asarray(Image.open(dev / g.file).convert("RGB")), nms_iou=0.4, score_thr=0.02)
             for g in gt}
    res = evaluate(gt, preds)
    assert res["ap"]["0.50"] > 0.8, res["ap"]
