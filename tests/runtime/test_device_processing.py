"""Pre/post-processing as torch ops on the detector's device (the GPU path), checked on the CPU
against the numpy host path; CUDA-only parts (GPU run, CUDA graphs) skip without a GPU."""

import numpy as np
import pytest
import torch

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import BackendUnavailableError, InputError
from rfdeploy.core.examples import example_image
from rfdeploy.core.image_io import load_image
from rfdeploy.core.preprocess import preprocess, preprocess_torch
from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_RANKER
from rfdeploy.runtime.backends.torch_runner import TorchRunner
from rfdeploy.runtime.facelogic import FaceLogicConfig, detector_batches
from rfdeploy.runtime.models import Detector, Ranker
from rfdeploy.runtime.pipeline import FacePipeline, PipelineOptions

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def _rgb(h=300, w=420, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_torch_preprocess_matches_numpy_without_resize(order):
    c = PreprocessContract(mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0), channel_order=order, pad_multiple=32)
    rgb = _rgb()
    a, la = preprocess(rgb, c, min_size=(480, 352))
    b, lb = preprocess_torch(torch.from_numpy(rgb), c, min_size=(480, 352))
    assert la == lb and a.shape == tuple(b.shape) == (1, 3, 352, 480)
    np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-5)


def test_torch_preprocess_resize_is_close_to_pillow():
    """Long-side resize: Pillow BILINEAR (uint8, antialiased, two rounded passes) vs the torch
    two-pass resize: at most one pixel level apart, and rarely that."""
    c = PreprocessContract(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="long_side", resize_to=200, pad_multiple=1)
    rgb = load_image(example_image()).rgb
    a, la = preprocess(rgb, c)
    b, lb = preprocess_torch(torch.from_numpy(rgb), c)
    assert la == lb and a.shape == tuple(b.shape)
    diff = np.abs(a - b.numpy())
    assert diff.max() <= 1.0 and diff.mean() < 0.01  # pixel levels 0..255


@pytest.mark.parametrize("size", [(300, 200), (129, 77), (1000, 20), (1023, 681)])
def test_torch_resize_matches_pillow_within_one_level(size, monkeypatch):
    """Down, up and mixed scales, with strips small enough that every pass is cut into several."""
    from PIL import Image

    from rfdeploy.core import preprocess as pp

    monkeypatch.setattr(pp, "RESIZE_STRIP_ELEMENTS", 3 * 1024 * 7)
    rgb = _rgb(512, 768, seed=3)
    rgb[100:300, 200:500] = 255 - rgb[100:300, 200:500] // 4  # edges, not just noise
    ref = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)).astype(np.int16)
    got = pp.resize_torch(torch.from_numpy(rgb), *size)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (size[1], size[0], 3)
    diff = np.abs(got.numpy().astype(np.int16) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.25  # Pillow works in fixed point
    assert pp.resize_torch(torch.from_numpy(rgb), 768, 512).data_ptr() == torch.from_numpy(rgb).data_ptr()


def test_tiled_batches_match_between_numpy_and_torch():
    c = PreprocessContract(mean=(120.0, 110.0, 100.0), std=(60.0, 60.0, 60.0))
    cfg = FaceLogicConfig(detector_contract=c, tile="256", tile_max_face=64, max_batch=3)
    rgb = _rgb(700, 900, seed=1)
    host = list(detector_batches(rgb, cfg))
    dev = list(detector_batches(torch.from_numpy(rgb), cfg))
    assert len(host) == len(dev) > 2
    for (xa, ja), (xb, jb) in zip(host, dev):
        assert isinstance(xb, torch.Tensor) and xa.shape == tuple(xb.shape) and len(xa) <= 3
        assert [(j.tile, j.letterbox) for j in ja] == [(j.tile, j.letterbox) for j in jb]
        full_scale = ja[0].pass_.scale == (1.0, 1.0)
        err = np.abs(xa - xb.numpy())
        # unscaled passes: the same float32 arithmetic on the same pixels; downscaled ones: the
        # resize kernels may differ by one pixel level (1/60 after normalisation)
        assert err.max() <= (0.0 if full_scale else 1 / 60 + 1e-6), (ja[0].pass_.scale, err.max())


def test_device_tiles_make_no_float_copy_of_a_whole_pass(monkeypatch):
    """Every float tensor made while cutting the batches of a tiled image stays within one resize
    strip or one batch: never the size of the image or of a downscaled pass."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from rfdeploy.core import preprocess as pp

    limit = 1 << 18
    monkeypatch.setattr(pp, "RESIZE_STRIP_ELEMENTS", limit)

    class LargestFloat(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    self.largest = max(self.largest, t.numel())
            return out

    c = PreprocessContract(mean=(120.0, 110.0, 100.0), std=(60.0, 60.0, 60.0))
    cfg = FaceLogicConfig(detector_contract=c, tile="256", tile_max_face=64, max_batch=2)
    rgb = torch.from_numpy(_rgb(900, 1400, seed=2))
    with LargestFloat() as mode:
        batches = list(detector_batches(rgb, cfg))
    assert len(batches) > 10 and any(j[0].pass_.scale != (1.0, 1.0) for _, j in batches)
    batch_elems = max(x.numel() for x, _ in batches)
    assert 0 < mode.largest <= max(limit, batch_elems) < rgb.numel() / 2, (mode.largest, batch_elems)


@pytest.fixture(scope="module")
def torch_models():
    return Detector(TorchRunner(DEFAULT_DETECTOR).activate()), Ranker(TorchRunner(DEFAULT_RANKER).activate())


def test_pipeline_on_torch_ops_agrees_with_host_path(torch_models):
    det, rank = torch_models
    rgb = load_image(example_image()).rgb
    host = FacePipeline(det, rank, PipelineOptions(score_thr=0.05, torch_preprocess=False))
    dev = FacePipeline(det, rank, PipelineOptions(score_thr=0.05, torch_preprocess=True))
    assert host._logic.device is None and dev._logic.device == "cpu"
    a, b = host.detect(rgb), dev.detect(rgb)
    assert len(a) == len(b) > 0
    # the same boxes; the detector sees the image unresized, so its scores agree to float noise
    dist = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(axis=2)
    match = dist.argmin(axis=1)
    assert sorted(match.tolist()) == list(range(len(b)))
    np.testing.assert_allclose(a.boxes, b.boxes[match], atol=1e-3)
    np.testing.assert_allclose(a.detector_scores, b.detector_scores[match], atol=1e-5)
    # the ranker sees it downscaled to 320 px, where the torch resize lands within one level of
    # Pillow's: its refined scores move by a few 1e-3 at most, so near-equal ones may swap places
    assert np.abs(a.scores - b.scores[match]).max() < 5e-3
    assert np.any(np.abs(a.scores - a.detector_scores) > 1e-2)  # the ranker did re-score


def test_tiled_pipeline_on_torch_ops_finds_the_same_faces(torch_models):
    """A 4x tiled copy of the photo: tiles and pyramid passes through torch ops give the same
    faces as the host path (downscaled passes may move boxes slightly)."""
    from torchvision.ops import box_iou

    det, _ = torch_models
    rgb = np.ascontiguousarray(np.tile(load_image(example_image()).rgb, (2, 3, 1)))
    opts = dict(score_thr=0.3, tile="512", use_ranker=False)
    a = FacePipeline(det, None, PipelineOptions(**opts, torch_preprocess=False)).detect(rgb)
    b = FacePipeline(det, None, PipelineOptions(**opts, torch_preprocess=True)).detect(rgb)
    assert len(a) >= 6
    iou = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).numpy()
    assert abs(len(a) - len(b)) <= 1 and (iou.max(1) > 0.9).mean() > 0.9


def test_auto_keeps_host_processing_on_cpu(torch_models):
    det, rank = torch_models
    assert FacePipeline(det, rank)._logic.device is None


def test_cuda_graph_needs_cuda_and_the_torch_backend():
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        TorchRunner(DEFAULT_DETECTOR, device="cpu", cuda_graph=True)
    with pytest.raises(InputError, match="torch"):
        FacePipeline.create(backend="onnxruntime", cuda_graph=True)


def test_cli_cuda_graph_without_torch_backend_is_a_clear_error():
    from click.testing import CliRunner

    from rfdeploy.cli import main

    r = CliRunner().invoke(main, ["infer", str(example_image()), "--cuda-graph", "--backend", "onnxruntime"])
    assert r.exit_code == 2 and "torch" in r.output and "Traceback" not in r.output


@needs_cuda
def test_gpu_pipeline_matches_cpu():
    rgb = load_image(example_image()).rgb
    cpu = FacePipeline.create(backend="torch", score_thr=0.05).detect(rgb)
    gpu_pipe = FacePipeline.create(backend="torch", device="cuda", score_thr=0.05)
    assert gpu_pipe._logic.device.startswith("cuda")
    gpu = gpu_pipe.detect(rgb)
    assert len(cpu) == len(gpu) > 0
    np.testing.assert_allclose(cpu.boxes, gpu.boxes, atol=0.05)
    np.testing.assert_allclose(cpu.scores, gpu.scores, atol=1e-3)


@needs_cuda
def test_cuda_graph_replays_match_eager():
    x = torch.randn(2, 3, 256, 320, device="cuda")
    eager = TorchRunner(DEFAULT_DETECTOR, device="cuda").activate().infer({"image": x})
    runner = TorchRunner(DEFAULT_DETECTOR, device="cuda", cuda_graph=True).activate()
    for _ in range(3):  # capture, then replays
        out = runner.infer({"image": x})
    assert runner.cuda_graph and len(runner._graphs) == 1, runner.notes
    np.testing.assert_allclose(out["scores"], eager["scores"], atol=1e-4)
    np.testing.assert_allclose(out["boxes"], eager["boxes"], atol=1e-2)
