"""Outputs get the permissions of ordinary files under the process umask (0644 with umask 022),
not the 0600 of the private temporary file they are written through (rfdeploy.core.fsutil)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from rfdeploy.cli import main
from rfdeploy.core.examples import example_image
from rfdeploy.eval.wider import write_results
from rfdeploy.runtime.batch import _write_jsonl

FILE, DIR = 0o644, 0o755


@pytest.fixture(autouse=True)
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_infer_results_and_annotated_images(tmp_path):
    out, vis = tmp_path / "faces.jsonl", tmp_path / "vis"
    res = CliRunner().invoke(main, ["infer", str(example_image()), "--out", str(out), "--save-vis", str(vis), "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["faces"]
    images = list(vis.iterdir())
    assert [p.name for p in images] == ["astronaut.jpg"]
    assert _mode(out) == FILE and _mode(images[0]) == FILE


def test_batch_results_and_wider_result_files(tmp_path):
    _write_jsonl(tmp_path / "batch.jsonl", [{"file": "a.jpg", "faces": []}])
    assert _mode(tmp_path / "batch.jsonl") == FILE
    path = write_results(tmp_path / "pred", "0--Parade", "a.jpg", np.array([[0, 0, 10, 10]]), np.array([0.9]))
    assert _mode(path) == FILE
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]  # no temporary left beside it
