"""The torch runner: what CUDA-graph capture needs from the models (checked on the CPU), and on a
GPU: fp32 parity without TF32, fp16 with an fp32 tail, CUDA graphs (replay from worker threads,
one memory pool, recovery from a failed capture). CUDA tests skip without a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_RANKER
from rfdeploy.runtime.backends.torch_runner import TorchRunner

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def _model(path, narrow: bool = False):
    """The bundled model's architecture (its stored config), freshly initialised with a fixed seed:
    these tests are about the runner and the graph, not about trained weights. ``narrow``: fewer
    channels (the same layers, anchors and decoding), for speed on the CPU."""
    import dataclasses

    from rfdeploy.models import build
    from rfdeploy.models.checkpoint import read_config
    from rfdeploy.models.config import RankerConfig

    cfg = read_config(path)
    if narrow:
        small = (dict(fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64) if isinstance(cfg, RankerConfig)
                 else dict(fpn_channels=16, head_channels=16))
        cfg = dataclasses.replace(cfg, **small)
    torch.manual_seed(0)
    return build(cfg).eval()


def _ranker_feed(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((1, n, 5), np.float32)
    k = n // 2
    boxes[0, :k, :2] = rng.uniform(0, 0.8, (k, 2))
    boxes[0, :k, 2:4] = rng.uniform(0.02, 0.2, (k, 2))
    boxes[0, :k, 4] = np.sort(rng.uniform(0.5, 1.0, k))[::-1]
    return boxes


def _refusing_host_data():
    """Patches that make every constructor of a tensor from host data fail."""
    def refuse(*a, **k):
        raise AssertionError("a tensor was built from host data inside the model's forward")

    return [(torch, "tensor", refuse), (torch, "as_tensor", refuse), (torch, "from_numpy", refuse),
            (torch.Tensor, "new_tensor", refuse)]


@pytest.mark.parametrize("path", [DEFAULT_DETECTOR, DEFAULT_RANKER], ids=["detector", "ranker"])
def test_a_repeated_shape_builds_no_tensor_from_host_data_inside_the_model(path, monkeypatch):
    """CUDA-graph capture refuses host-to-device copies: after a warm-up forward, the module the
    runner captures must not build a tensor from host data for the same input shape."""
    runner = TorchRunner(_model(path, narrow=True)).activate()
    feed = {"image": np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)}
    if not runner.is_detector:
        feed = {"image": feed["image"][:1], "boxes": _ranker_feed(runner.model.cfg.num_boxes)}
    first = runner.infer(feed)
    model_forward = runner.model.forward

    def guarded(*args):
        with monkeypatch.context() as m:
            for owner, name, fn in _refusing_host_data():
                m.setattr(owner, name, fn)
            return model_forward(*args)

    monkeypatch.setattr(runner.model, "forward", guarded)
    again = runner.infer(feed)  # the runner's own host-to-device upload is outside the model
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    with pytest.raises(AssertionError, match="host data"):  # the guard itself bites
        with monkeypatch.context() as m:
            for owner, name, fn in _refusing_host_data():
                m.setattr(owner, name, fn)
            torch.tensor([1.0])


def test_a_graph_holds_the_tensors_its_module_caches():
    """A captured graph reads RefineFace's cached anchor grids by address; the model may evict
    them (its cache is bounded), so the runner holds every tensor a module caches at capture."""
    from rfdeploy.runtime.backends.torch_runner import _module_caches

    model = _model(DEFAULT_DETECTOR, narrow=True)
    assert _module_caches(model) == ()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
    held = _module_caches(model)
    cached = list(model._anchor_cache.values())  # the index-to-anchor tables of this input size
    assert len(cached) == 4 and {id(t) for t in cached} <= {id(t) for t in held}
    assert not any(isinstance(t, torch.nn.Parameter) for t in held)  # parameters live anyway


# --- CUDA -------------------------------------------------------------------------------------


def _unambiguous(scores: np.ndarray, gap: float = 1e-4) -> np.ndarray:
    """Rows of a score-sorted candidate list whose place cannot swap with a neighbour's under
    rounding (live scores further than ``gap`` from both neighbours)."""
    s = scores
    left = np.r_[np.inf, s[:-1] - s[1:]]
    right = np.r_[s[:-1] - s[1:], np.inf]
    return (s > 0) & (left > gap) & (right > gap)


@needs_cuda
def test_fp32_on_the_gpu_matches_the_cpu_without_tf32():
    x = np.random.default_rng(2).standard_normal((1, 3, 256, 320)).astype(np.float32)
    cpu = TorchRunner(_model(DEFAULT_DETECTOR)).activate().infer({"image": x})
    gpu_runner = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda").activate()
    gpu = gpu_runner.infer({"image": x})
    assert "without TF32" in gpu_runner.describe()
    # TF32 (10-bit mantissa) convolutions would be off by ~1e-4 in these scores already
    np.testing.assert_allclose(gpu["scores"], cpu["scores"], atol=2e-5)
    sure = _unambiguous(cpu["scores"][0])
    assert sure.sum() >= 5
    np.testing.assert_allclose(gpu["boxes"][0][sure], cpu["boxes"][0][sure], atol=2e-3)


@needs_cuda
def test_fp16_keeps_the_ranker_score_tail_and_detector_decode_in_fp32():
    ranker = _model(DEFAULT_RANKER)
    for fc in ranker.conf_fc:  # residual exactly 0: the output must be the input scores, bit for bit
        torch.nn.init.zeros_(fc.weight)
        torch.nn.init.zeros_(fc.bias)
    r16 = TorchRunner(ranker, device="cuda", fp16=True).activate()
    feed = {"image": np.random.default_rng(3).standard_normal((1, 3, 256, 256)).astype(np.float32),
            "boxes": _ranker_feed(ranker.cfg.num_boxes, seed=3)}
    feed["boxes"][0, 1, 4] = feed["boxes"][0, 0, 4] - 1e-4  # a gap fp16 cannot hold near 1
    out = r16.infer(feed)["scores"]
    np.testing.assert_array_equal(out[0], feed["boxes"][0, :, 4])

    det16 = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda", fp16=True).activate()
    x = np.random.default_rng(4).standard_normal((1, 3, 512, 640)).astype(np.float32)
    d16 = det16.infer({"image": x})
    d32 = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda").activate().infer({"image": x})
    live = d16["scores"][0] > 0
    assert live.any() and d16["boxes"].dtype == np.float32
    # decoded in fp32: coordinates from 256 px up are off fp16's grid there (0.25-0.5 px)
    coords = d16["boxes"][0][live]
    coords = coords[coords >= 256]
    assert coords.size > 20 and (np.abs(coords * 4 - np.round(coords * 4)) > 1e-3).mean() > 0.5
    top = min(50, int(live.sum()))  # score-sorted: the sorted values compare whatever the order
    np.testing.assert_allclose(d16["scores"][0, :top], d32["scores"][0, :top], atol=2e-2)


@needs_cuda
def test_cuda_graphs_share_one_pool_and_replay_correctly_from_threads():
    runner = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda", cuda_graph=True).activate()
    eager = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda").activate()
    shapes = [(2, 3, 128, 160), (1, 3, 96, 128)]
    for s in shapes:
        runner.infer({"image": np.zeros(s, np.float32)})
    assert runner.cuda_graph and len(runner._graphs) == 2, runner.notes
    pools = {entry[0].pool() for entry in runner._graphs.values()}
    assert len(pools) == 1

    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal(shapes[i % 2]).astype(np.float32) for i in range(8)]
    expect = [eager.infer({"image": x}) for x in inputs]
    got: dict[int, list] = {}

    def work(i):
        stream = torch.cuda.Stream()  # each worker on its own stream: replays must still be ordered
        with torch.cuda.stream(stream):
            got[i] = [runner.infer({"image": inputs[i]}) for _ in range(5)]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, outs in got.items():
        for out in outs:
            np.testing.assert_allclose(out["scores"], expect[i]["scores"], atol=1e-4)
    assert len(got) == len(inputs) and len(runner._graphs) == 2


@needs_cuda
def test_a_failed_capture_falls_back_to_eager_and_restores_the_stream(monkeypatch):
    runner = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda", cuda_graph=True).activate()
    backbone_forward = runner.model.backbone.forward

    def syncs(x):
        x.sum().item()  # a host sync: fine eagerly, refused while capturing
        return backbone_forward(x)

    monkeypatch.setattr(runner.model.backbone, "forward", syncs)
    before = torch.cuda.current_stream()
    x = np.random.default_rng(6).standard_normal((1, 3, 96, 128)).astype(np.float32)
    out = runner.infer({"image": x})
    assert torch.cuda.current_stream() == before
    assert not runner.cuda_graph and any("capture failed" in n for n in runner.notes)
    ref = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda").activate().infer({"image": x})
    np.testing.assert_allclose(out["scores"], ref["scores"], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA GPUs")
def test_capture_on_the_second_gpu_stays_there():
    runner = TorchRunner(_model(DEFAULT_DETECTOR), device="cuda:1", cuda_graph=True).activate()
    x = np.zeros((1, 3, 96, 128), np.float32)
    for _ in range(2):
        runner.infer({"image": x})
    assert runner.cuda_graph and len(runner._graphs) == 1, runner.notes
    (_, static_in, _), = runner._graphs.values()
    assert static_in[0].device == torch.device("cuda", 1)
