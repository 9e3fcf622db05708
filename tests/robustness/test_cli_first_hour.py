"""What a new user meets first: option help, `info`, progress output in logs, annotated images,
the result records and their schema, `eval` on `infer`'s own output, `bench`'s table."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from robust_helpers import HOPPER, REPO, run_cli, small_image, tiny_args

from rfdeploy.cli import main

SCHEMA = REPO / "docs" / "infer_record.schema.json"


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_option_has_help_and_shows_its_default():
    checked = 0
    for name, cmd in _commands(main):
        ctx = click.Context(cmd, info_name=" ".join(name), show_default=True)
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden or p.name in ("help", "version"):
                continue
            assert p.help and p.help.strip(), f"rfdeploy {' '.join(name)} {p.opts[0]} has no help text"
            record = p.get_help_record(ctx)
            assert record is not None
            default = p.default
            plain = isinstance(default, (int, float, str, tuple, list)) and not isinstance(default, bool)
            if not p.required and plain and default not in ((), []):
                assert "[default:" in record[1], (name, p.opts, record)
            checked += 1
    assert checked > 100  # every command was walked


def test_one_name_for_the_detector_in_help_and_all_names_still_work(tiny_ckpt, photo_dir):
    res = run_cli("infer", "--help")
    assert res.exit_code == 0
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("--detector"))
    assert "--checkpoint" not in line and "--onnx" not in line.split("  ")[0]
    text = " ".join(res.stdout.split())
    for kind in (".safetensors/.pt checkpoint", "rfdeploy .onnx", "TensorRT .engine", "third-party ONNX detector"):
        assert kind in text
    for alias in ("--detector", "--checkpoint", "--onnx", "--engine"):
        args = tiny_args(tiny_ckpt)
        args[0] = alias
        assert run_cli("infer", photo_dir / "a_hopper.jpg", *args, "-q").exit_code == 0, alias


def test_info_prints_the_config_whole_and_as_json(tiny_ckpt):
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt), framework="numpy") as f:
        config = json.loads(f.metadata()["rfdeploy.config"])
    res = run_cli("info", tiny_ckpt)
    assert res.exit_code == 0, res.output
    assert "..." not in res.stdout
    for key, value in config.items():  # every field, with its whole value
        assert f"{key}: {json.dumps(value)}" in res.stdout, key
    res = run_cli("info", tiny_ckpt, "--json")
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert d["kind"] == "safetensors" and json.loads(d["metadata"]["rfdeploy.config"]) == config


def test_progress_in_a_log_is_plain_lines(tiny_ckpt, photo_dir, monkeypatch):
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt))
    assert res.exit_code == 0, res.output
    assert "\r" not in res.stderr and "\x1b" not in res.stderr  # no terminal codes in a log file
    assert "# 2/4 images" in res.stderr and "# 4/4 images" in res.stderr
    # on a terminal it is a tqdm bar instead
    import rfdeploy.cli as cli

    monkeypatch.setattr(cli, "_is_tty", lambda stream: True)
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt))
    assert res.exit_code == 0 and "\r" in res.stderr and "4/4" in res.stderr and "# 4/4 images" not in res.stderr


def test_save_vis_keeps_the_format_and_draws_scaled_labels(tiny_ckpt, photo_dir, tmp_path):
    from PIL import Image

    vis = tmp_path / "vis"
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt), "--save-vis", vis, "-q")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in vis.iterdir())
    assert names == ["a_hopper.jpg", "b_astronaut.png", "c_hopper_wide.jpg", "d_astronaut.jpg"]
    with Image.open(vis / "b_astronaut.png") as im:
        assert im.format == "PNG" and im.size == (128, 128)
    with Image.open(vis / "a_hopper.jpg") as im:
        assert im.format == "JPEG"


def _label_height(side: int) -> tuple[int, bool]:
    """Height of the score tab drawn above one box, and whether it holds text pixels."""
    from PIL import Image

    from rfdeploy.core.detections import Detections

    y1 = side // 2
    box = [side // 4, y1, side // 2, side * 3 // 4]
    img = np.asarray(Detections([box], [0.87]).draw(Image.new("RGB", (side, side))))
    green = (img[..., 1] > 200) & (img[..., 0] < 60)
    col = green[:y1, box[0] + 1]  # the tab's left edge, above the box
    rows = np.flatnonzero(col)
    tab = img[rows.min():y1, box[0]:box[2]]
    has_text = bool(((tab.sum(axis=2) < 100)).any())
    return y1 - int(rows.min()), has_text


def test_labels_scale_with_the_image_and_carry_the_score():
    small, text_small = _label_height(512)
    big, text_big = _label_height(4096)
    assert text_small and text_big
    assert small >= 14 and big >= 6 * small


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_records_have_the_same_keys_with_and_without_the_ranker_and_match_the_schema(
        tiny_ckpt, tiny_ranker_ckpt, photo_dir, tmp_path):
    validator = _validator()
    (photo_dir / "zz_broken.jpg").write_text("not an image")
    keys = {}
    for label, extra in (("ranker", ["--ranker", tiny_ranker_ckpt]), ("alone", ["--no-ranker"])):
        out = tmp_path / f"{label}.jsonl"
        args = ["--detector", tiny_ckpt, "--backend", "torch", "--score-thr", "0.3", *extra]
        res = run_cli("infer", photo_dir, *args, "--out", out, "-q")
        assert res.exit_code == 7, res.output  # one broken file among good ones
        recs = [json.loads(ln) for ln in out.read_text().splitlines()]
        for r in recs:
            validator.validate(r)
        faces = [f for r in recs for f in r.get("faces", [])]
        assert faces, label
        keys[label] = {tuple(sorted(f)) for f in faces}
        if label == "alone":
            assert all(f["detector_score"] == f["score"] for f in faces)
    assert keys["ranker"] == keys["alone"] == {("box", "detector_score", "score")}
    bad = {"file": "x.jpg", "width": 1, "height": 1, "faces": [{"box": [0, 0, 1, 1], "score": 0.5}], "timings_ms": {}}
    assert not validator.is_valid(bad)  # a face without detector_score is not a valid record


def test_eval_reads_what_infer_writes(tiny_ckpt, photo_dir, tmp_path):
    ann = {"images": [{"file": p.name, "width": 1, "height": 1, "faces": [{"box": [10, 10, 60, 70], "ignore": False}]}
                      for p in sorted(photo_dir.iterdir())]}
    gt = photo_dir / "annotations.json"
    gt.write_text(json.dumps(ann))
    out = tmp_path / "results.jsonl"
    res = run_cli("infer", photo_dir, "--detector", tiny_ckpt, "--no-ranker", "--backend", "torch", "--score-thr", "0",
                  "--out", out, "-q")
    assert res.exit_code == 0, res.output
    res = run_cli("eval", "--gt", gt, "--predictions", out, "--json-out", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert "| AP |" in res.stdout and "4 images" in res.stdout
    # a file that infer did not see is named, not silently scored as a miss
    ann["images"].append({"file": "e_unseen.jpg", "width": 1, "height": 1, "faces": []})
    gt.write_text(json.dumps(ann))
    res = run_cli("eval", "--gt", gt, "--predictions", out)
    assert res.exit_code == 2 and "e_unseen.jpg" in res.stderr and "--allow-missing" in res.stderr
    assert run_cli("eval", "--gt", gt, "--predictions", out, "--allow-missing").exit_code == 0
    help_text = " ".join(run_cli("eval", "--help").stdout.split())
    assert "rfdeploy infer --out" in help_text and "relative to --images" in help_text


def test_bench_prints_configuration_names_whole(tiny_ckpt, tmp_path):
    img = small_image(HOPPER, tmp_path / "h.jpg", (96, 112))
    res = run_cli("bench", *tiny_args(tiny_ckpt), "--image", img, "--size", "vga", "--runs", "1", "--warmup", "0",
                  "--compare", "tile=off")
    assert res.exit_code == 0, res.output
    rows = res.stdout.splitlines()
    labels = [ln for ln in rows if ln.startswith(("base: ", "tile=off: "))]
    assert len(labels) == 2
    for ln in labels:
        assert "torch" in ln and "(cpu" in ln, ln  # the whole note, backend and device included


def test_pyproject_license_is_an_spdx_string():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
