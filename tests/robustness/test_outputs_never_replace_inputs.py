"""Outputs never replace inputs or good earlier files, and unwritable outputs are clear errors."""

from __future__ import annotations

import hashlib
import os

import pytest
from robust_helpers import assert_clean_failure, run_cli, tiny_args

from rfdeploy.core.errors import InputError, ModelFileError


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_infer_out_that_is_an_input_is_refused(tiny_ckpt, photo_dir):
    img = photo_dir / "a_hopper.jpg"
    before = _sha(img)
    res = run_cli("infer", img, "--out", img, "--overwrite", *tiny_args(tiny_ckpt))
    assert_clean_failure(res, 2, "one of the input images")
    assert _sha(img) == before


def test_save_vis_into_the_input_folder_never_replaces_an_image(tiny_ckpt, photo_dir):
    img = photo_dir / "a_hopper.jpg"
    before = _sha(img)
    res = run_cli("infer", img, "--save-vis", photo_dir, "--overwrite", *tiny_args(tiny_ckpt))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "would replace the image itself" in res.output
    assert _sha(img) == before


def test_existing_save_vis_file_is_an_input_error_record(tiny_ckpt, photo_dir, tmp_path):
    img, vis = photo_dir / "a_hopper.jpg", tmp_path / "vis"
    assert run_cli("infer", img, "--save-vis", vis, *tiny_args(tiny_ckpt)).exit_code == 0
    res = run_cli("infer", img, "--save-vis", vis, "--out", tmp_path / "r.jsonl", *tiny_args(tiny_ckpt))
    import json

    rec = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert rec["error_type"] == "InputError" and rec["exit_code"] == 2 and "\n" not in rec["error"]
    assert res.exit_code != 0


def test_unwritable_out_is_a_clear_error(tiny_ckpt, photo_dir, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = run_cli("infer", photo_dir / "a_hopper.jpg", "--out", blocker / "r.jsonl", *tiny_args(tiny_ckpt))
    assert_clean_failure(res, 2, "cannot write")
    res = run_cli("infer", photo_dir / "a_hopper.jpg", "--save-vis", blocker / "vis", *tiny_args(tiny_ckpt))
    assert res.exit_code != 0 and "Traceback" not in res.output and "cannot write" in res.output


def test_batch_refuses_to_replace_an_input_or_an_existing_output(photo_dir, tmp_path):
    from rfdeploy.runtime.batch import run_batch

    img = photo_dir / "a_hopper.jpg"
    before = _sha(img)
    with pytest.raises(InputError, match="one of the input images"):
        run_batch([img, img], img, pipeline_factory=lambda: None, overwrite=True)
    assert _sha(img) == before
    done = tmp_path / "done.jsonl"
    done.write_text("{}\n")
    with pytest.raises(InputError, match="exists"):
        run_batch([img], done, pipeline_factory=lambda: None)
    with pytest.raises(InputError, match="is a folder"):
        run_batch([img], tmp_path, pipeline_factory=lambda: None)


def test_failed_export_keeps_the_previous_file(tiny_ckpt, tmp_path, monkeypatch):
    from rfdeploy.export import api, verify

    dst = tmp_path / "det.onnx"
    list(api.export_checkpoint(tiny_ckpt, dst))
    good = _sha(dst)

    def broken(*a, **k):
        raise KeyboardInterrupt  # an interrupt during verification

    monkeypatch.setattr(verify, "verify_onnx", broken)
    with pytest.raises(KeyboardInterrupt):
        list(api.export_checkpoint(tiny_ckpt, dst))
    assert _sha(dst) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx"]  # no temporary file left


def test_bench_refuses_zero_runs_and_parses_numeric_compare_values(tiny_ckpt):
    res = run_cli("bench", "--runs", "0", "--detector", tiny_ckpt)
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = run_cli("bench", "--size", "vga", "--runs", "1", "--warmup", "0", "--compare", "score_thr=0.6",
                  "--detector", tiny_ckpt, "--no-ranker", "--backend", "torch")
    assert res.exit_code == 0, res.output
    res = run_cli("bench", "--runs", "1", "--compare", "score_thr=high", "--detector", tiny_ckpt, "--no-ranker",
                  "--backend", "torch")
    assert_clean_failure(res, 2, "takes a number")


def test_a_checkpoint_whose_config_cannot_be_built_is_a_model_file_error(tiny_ckpt, tmp_path):
    import json

    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    from rfdeploy.models import load

    with safe_open(str(tiny_ckpt), framework="np") as f:
        meta = dict(f.metadata() or {})
    key = next(k for k, v in meta.items() if v.lstrip().startswith("{") and "fpn_channels" in v)
    cfg = json.loads(meta[key])
    cfg["fpn_channels"] = -1
    meta[key] = json.dumps(cfg)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(tiny_ckpt)), str(bad), metadata=meta)
    with pytest.raises(ModelFileError):
        load(bad)
    assert os.path.exists(bad)


def test_same_named_inputs_never_replace_each_others_annotated_copy(tiny_ckpt, photo_dir, tmp_path):
    import json
    import shutil

    a, b = tmp_path / "c1", tmp_path / "c2"
    a.mkdir()
    b.mkdir()
    shutil.copy(photo_dir / "a_hopper.jpg", a / "x.jpg")
    shutil.copy(photo_dir / "d_astronaut.jpg", b / "x.jpg")
    vis, out = tmp_path / "vis", tmp_path / "r.jsonl"
    run_cli("infer", a / "x.jpg", b / "x.jpg", "--save-vis", vis, "--overwrite", "--out", out, *tiny_args(tiny_ckpt))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert "error" not in recs[0] and "another input of the same name" in recs[1]["error"]
    from PIL import Image

    assert Image.open(vis / "x.jpg").size == Image.open(a / "x.jpg").size  # the first copy is kept


def test_bad_device_workers_and_config_types_are_usage_or_model_errors(tiny_ckpt, photo_dir):
    from rfdeploy.models.config import config_from_dict, detector_config

    img = photo_dir / "a_hopper.jpg"
    for extra in (["--device", "foo"], ["--workers", "-3"]):
        res = run_cli("infer", img, *tiny_args(tiny_ckpt), *extra)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    d = detector_config("refineface_mnet025").to_dict()
    with pytest.raises(ValueError, match="output_score_threshold must be a float"):
        config_from_dict({**d, "output_score_threshold": "hi"})
    assert config_from_dict({**d, "output_score_threshold": 1}).output_score_threshold == 1  # ints are numbers
