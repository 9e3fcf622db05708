"""The base install (onnxruntime, no torch): the command line runs ONNX files and engines in a
fresh process where torch, torchvision and the training packages cannot be imported
(tests/no_torch.py answers their imports as an install without the extras would, and records
every attempt), and checkpoints then fail with a clear error naming the extra."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from no_torch import run_without_torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "rfdeploy/assets/astronaut.jpg"


def test_infer_on_the_bundled_example_never_imports_torch(tmp_path):
    cache = tmp_path / "cache"
    p, attempted, loaded = run_without_torch("infer", EXAMPLE, cache=cache)
    assert p.returncode == 0, p.stderr
    assert attempted == []  # not even an attempt that a fallback caught
    assert loaded == []  # nor the onnx package: the runner reads metadata from its session
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    assert rec["file"] == EXAMPLE and rec["faces"], rec
    best = rec["faces"][0]
    assert best["score"] > 0.5 and best["box"][0] < best["box"][2]
    assert "refineface" in p.stderr and "onnxruntime" in p.stderr  # the bundled ONNX files ran
    assert not cache.exists() or not any(cache.rglob("*"))  # and nothing was exported first


def test_info_bench_and_eval_run_without_torch(tmp_path):
    from rfdeploy.models import DEFAULT_DETECTOR_ONNX

    cache = tmp_path / "cache"
    p, attempted, _ = run_without_torch("info", DEFAULT_DETECTOR_ONNX, "--json", cache=cache)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["kind"] == "onnx" and attempted == []

    p, attempted, _ = run_without_torch("bench", "--runs", "1", "--warmup", "0", "--no-ranker", cache=cache)
    assert p.returncode == 0, p.stderr
    assert "vga" in p.stdout and attempted == []

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"file": "astronaut.jpg",
                                          "faces": [{"box": [176, 44, 274, 194], "ignore": False}]}]}))
    p, attempted, _ = run_without_torch("eval", "--gt", gt, "--images", ROOT / "rfdeploy" / "assets",
                                        "--json-out", tmp_path / "m.json", cache=cache)
    assert p.returncode == 0, p.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert attempted == [] and metrics, metrics


@pytest.mark.parametrize("args", [
    ["infer", EXAMPLE, "--detector", "CHECKPOINT"],
    ["infer", EXAMPLE, "--backend", "torch"],
    ["export", "CHECKPOINT", "-o", "OUT"],
], ids=["infer-checkpoint", "torch-backend", "export"])
def test_checkpoints_without_torch_exit_5_naming_the_extra(args, tmp_path):
    from rfdeploy.models import DEFAULT_DETECTOR

    args = [str(DEFAULT_DETECTOR) if a == "CHECKPOINT" else str(tmp_path / "x.onnx") if a == "OUT" else a
            for a in args]
    p, _, _ = run_without_torch(*args, cache=tmp_path / "cache")
    assert p.returncode == 5, p.stderr
    assert 'pip install "rfdeploy[torch]"' in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a_checkpoint_already_exported_runs_without_torch(tmp_path):
    """The ONNX cache is keyed by the checkpoint's sha256: once exported, a checkpoint runs on
    onnxruntime alone. (The cached file here is the shipped ONNX, which test_bundled_onnx proves
    equal to a fresh export of that checkpoint.)"""
    import shutil

    from rfdeploy.export.cache import cached_export_path
    from rfdeploy.models import DEFAULT_RANKER, DEFAULT_RANKER_ONNX

    cache = tmp_path / "cache"
    cached = cached_export_path(DEFAULT_RANKER, cache / "onnx")
    cached.parent.mkdir(parents=True)
    shutil.copy(DEFAULT_RANKER_ONNX, cached)
    p, attempted, _ = run_without_torch("infer", EXAMPLE, "--ranker", DEFAULT_RANKER, cache=cache)
    assert p.returncode == 0, p.stderr
    assert attempted == [] and json.loads(p.stdout.strip().splitlines()[-1])["faces"]
    assert "exported" not in p.stderr


def test_metadata_keys_read_without_the_exporter_are_the_ones_it_writes():
    # one torch-free module holds the keys (rfdeploy.core.metadata): what the exporter writes is
    # what the runtime's readers take back
    from rfdeploy.core import metadata
    from rfdeploy.export import onnx_export
    from rfdeploy.models import detector_config, ranker_config
    from rfdeploy.models.config import config_from_dict

    for cfg, kind in ((detector_config("refineface_mbv2"), "detector"), (ranker_config("crface_small"), "ranker")):
        written = onnx_export.model_metadata(cfg, None)
        assert metadata.read_kind(written) == kind
        assert metadata.read_contract(written, "export") == cfg.contract
        assert config_from_dict(metadata.read_config(written, "export")) == cfg
