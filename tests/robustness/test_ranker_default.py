"""infer, eval, batch and bench run the detector alone unless a ranker is asked for (--ranker FILE or
--with-ranker): measured, the bundled ranker does not pay for its time (docs/benchmarks.md,
"Ranker"). Records keep the same keys either way."""

from __future__ import annotations

import json

import pytest
from robust_helpers import assert_clean_failure, run_cli

from rfdeploy.cli import _use_ranker
from rfdeploy.core.errors import InputError


def _faces(path):
    return [f for r in (json.loads(ln) for ln in path.read_text().splitlines()) for f in r["faces"]]


def test_the_default_is_the_detector_alone(tiny_ckpt, tiny_ranker_ckpt, photo_dir, tmp_path):
    base = ["--detector", tiny_ckpt, "--backend", "torch", "--score-thr", "0.3"]
    runs = {}
    for label, extra in (("default", []), ("no-ranker", ["--no-ranker"]), ("ranker", ["--ranker", tiny_ranker_ckpt])):
        out = tmp_path / f"{label}.jsonl"
        res = run_cli("infer", photo_dir, *base, *extra, "--out", out)
        assert res.exit_code == 0, res.output
        notes = [ln for ln in res.stderr.splitlines() if ln.startswith("# ")]
        runs[label] = (notes, _faces(out))
    notes, faces = runs["default"]
    assert notes and not any("ranker" in n for n in notes), notes
    assert faces and all(f["detector_score"] == f["score"] for f in faces)
    assert runs["no-ranker"][1] == faces  # the explicit flag is the default
    r_notes, r_faces = runs["ranker"]
    assert any(n.startswith("# ranker ") for n in r_notes), r_notes
    assert any(f["score"] != f["detector_score"] for f in r_faces)  # the ranker ran and re-scored
    assert {tuple(sorted(f)) for f in r_faces} == {tuple(sorted(f)) for f in faces} == {("box", "detector_score", "score")}


def test_with_ranker_uses_the_bundled_ranker(tiny_ckpt, photo_dir):
    res = run_cli("infer", photo_dir / "a_hopper.jpg", "--detector", tiny_ckpt, "--with-ranker", "--backend", "torch")
    assert res.exit_code == 0, res.output
    assert any(ln.startswith("# ranker crface_roi") for ln in res.stderr.splitlines()), res.stderr


@pytest.mark.parametrize("extra", [["--with-ranker"], ["--ranker", "r.onnx"]])
def test_no_ranker_with_a_ranker_is_a_clear_error(tiny_ckpt, photo_dir, extra):
    res = run_cli("infer", photo_dir / "a_hopper.jpg", "--detector", tiny_ckpt, "--no-ranker", *extra)
    assert_clean_failure(res, 2, "--no-ranker contradicts")


def test_ranker_runs_is_the_one_rule():
    from rfdeploy.runtime.logic_config import ranker_runs

    assert ranker_runs(None) is False and ranker_runs("r.onnx") is True  # None: only when given
    assert ranker_runs(None, True) is True  # the bundled ranker
    assert ranker_runs("r.onnx", False) is False  # an explicit False wins over a given file


def test_use_ranker_rules():
    assert _use_ranker(None, False, False) is False
    assert _use_ranker(None, False, True) is False
    assert _use_ranker("r.onnx", False, False) is True
    assert _use_ranker(None, True, False) is True
    with pytest.raises(InputError):
        _use_ranker(None, True, True)


def test_help_says_the_default(tiny_ckpt):
    for cmd in ("infer", "eval", "batch", "bench", "triton-repo"):
        text = " ".join(run_cli(cmd, "--help").stdout.split())
        assert "--with-ranker" in text, cmd
    text = " ".join(run_cli("infer", "--help").stdout.split())
    assert "the detector runs alone" in text


def test_library_default_matches_the_cli(tiny_ckpt, tiny_ranker_ckpt):
    from rfdeploy.runtime.pipeline import FacePipeline

    assert FacePipeline.create(detector=tiny_ckpt, backend="torch").ranker is None
    assert FacePipeline.create(detector=tiny_ckpt, ranker=tiny_ranker_ckpt, backend="torch").ranker is not None
    assert FacePipeline.create(detector=tiny_ckpt, ranker=tiny_ranker_ckpt, use_ranker=False, backend="torch").ranker is None
    bundled = FacePipeline.create(detector=tiny_ckpt, use_ranker=True, backend="torch")
    assert bundled.ranker is not None and any(n.startswith("ranker ") for n in bundled.notes)
