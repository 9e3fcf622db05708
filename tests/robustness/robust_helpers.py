"""Shared pieces for the robustness suite: a tiny detector checkpoint, small images, a CLI helper."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOPPER = REPO / "tests" / "fixtures" / "grace_hopper.jpg"
ASTRONAUT = REPO / "rfdeploy" / "assets" / "astronaut.jpg"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # Several intra-op threads on a busy 2-core machine spin against each other (a 50x slowdown
    # was seen); these tests time nothing, so one thread per library keeps them fast and steady.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("RFDEPLOY_ORT_THREADS", "1")
    yield
    torch.set_num_threads(before)


def tiny_detector(seed: int = 0):
    """An untrained small RefineFace whose classifier starts near p = 0.5, so it reports boxes."""
    import torch

    from rfdeploy.models import build, detector_config

    torch.manual_seed(seed)
    model = build(detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=100))
    with torch.no_grad():
        model.cls_head.pred.bias.zero_()
    return model


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from rfdeploy.models.checkpoint import save_checkpoint

    return save_checkpoint(tiny_detector(), tmp_path_factory.mktemp("ckpt") / "tiny_det.safetensors")


def tiny_ranker(seed: int = 0):
    """A small CRFace with random weights everywhere (a fresh one returns its input scores)."""
    import torch

    from rfdeploy.models import build, ranker_config

    torch.manual_seed(seed)
    model = build(ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def tiny_ranker_ckpt(tmp_path_factory) -> Path:
    from rfdeploy.models.checkpoint import save_checkpoint

    return save_checkpoint(tiny_ranker(), tmp_path_factory.mktemp("ckpt") / "tiny_rank.safetensors")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """One ONNX cache for the tests that run the bundled models: the detector is exported once."""
    return tmp_path_factory.mktemp("rfdeploy_cache")


def small_image(src: Path, dst: Path, size: tuple[int, int], fmt: str | None = None) -> Path:
    """A reduced copy of a real photo (small inputs keep the model runs cheap)."""
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").resize(size).save(dst, fmt)
    return dst


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Four small real photos (JPEG and PNG)."""
    d = tmp_path / "photos"
    small_image(HOPPER, d / "a_hopper.jpg", (96, 112))
    small_image(ASTRONAUT, d / "b_astronaut.png", (128, 128))
    small_image(HOPPER, d / "c_hopper_wide.jpg", (160, 96))
    small_image(ASTRONAUT, d / "d_astronaut.jpg", (80, 80))
    return d


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str | os.PathLike) -> CliResult:
    from click.testing import CliRunner

    from rfdeploy.cli import main

    res = CliRunner().invoke(main, [os.fspath(a) for a in args], catch_exceptions=True)
    return CliResult(res.exit_code, res.stdout, res.stderr, res.exception)


def tiny_args(ckpt: Path, *extra: str) -> list[str]:
    """Options that run the tiny detector alone on the torch backend (no ONNX export)."""
    return ["--detector", os.fspath(ckpt), "--no-ranker", "--backend", "torch", "--score-thr", "0.3", *extra]


def assert_clean_failure(res: CliResult, code: int, *needles: str) -> str:
    """The run failed with ``code`` and one clear error line (plus an optional hint), no traceback."""
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    # click's runner turns sys.exit into SystemExit; anything else escaped the CLI's handling
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors, res.stderr
    for line in res.stderr.splitlines():
        assert line.startswith(("error:", "  hint:", "# ", "\r")) or not line.strip() or "img/s" in line, line
    text = "\n".join(errors)
    for n in needles:
        assert n in text, (n, text)
    return text
