"""`rfdeploy infer` end to end on bad inputs: documented exit codes, one clear message, no
traceback, good results kept, no half-written output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from robust_helpers import HOPPER, assert_clean_failure, run_cli, small_image, tiny_args

from rfdeploy.core.errors import PARTIAL_FAILURE_EXIT_CODE


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_part_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".part")]


def test_one_good_image_succeeds(tiny_ckpt, photo_dir):
    res = run_cli("infer", photo_dir / "a_hopper.jpg", *tiny_args(tiny_ckpt))
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip())
    assert (rec["width"], rec["height"]) == (96, 112)
    assert rec["faces"], "the tiny detector with --score-thr 0.3 should report boxes"


@pytest.mark.parametrize("case", ["missing", "zero_byte", "text_as_jpg", "empty_dir", "dir_without_images", "glob"])
def test_bad_input_exits_2_with_one_clear_line(tiny_ckpt, tmp_path, case):
    if case == "missing":
        target, needle = tmp_path / "nope.jpg", "no such file"
    elif case == "zero_byte":
        target, needle = tmp_path / "empty.jpg", "empty file"
        target.write_bytes(b"")
    elif case == "text_as_jpg":
        target, needle = tmp_path / "notes.jpg", "not an image"
        target.write_text("just some text\nnot a picture\n")
    elif case == "empty_dir":
        target, needle = tmp_path / "nothing", "contains no images"
        target.mkdir()
    elif case == "dir_without_images":
        target, needle = tmp_path / "docs", "contains no images"
        target.mkdir()
        (target / "readme.txt").write_text("x")
        (target / ".hidden.jpg").write_bytes(HOPPER.read_bytes())  # hidden files are skipped
    else:
        (tmp_path / "x.txt").write_text("x")
        target, needle = f"{tmp_path}/*.jpg", "matches no image files"
    out = tmp_path / "out.jsonl"
    res = run_cli("infer", target, *tiny_args(tiny_ckpt), "--out", out)
    assert_clean_failure(res, 2, needle)
    if case in ("zero_byte", "text_as_jpg"):
        # the file was read and failed: the results say so, in one error record
        (rec,) = read_jsonl(out)
        assert rec["error_type"] == "InputError" and rec["exit_code"] == 2 and needle in rec["error"]
    else:  # nothing to process: refused before any output is opened
        assert not out.exists()
    assert no_part_files(tmp_path)


def test_directory_with_one_bad_file_keeps_the_good_results(tiny_ckpt, photo_dir, tmp_path):
    (photo_dir / "c_broken.jpg").write_bytes(HOPPER.read_bytes()[:2000])  # truncated JPEG
    (photo_dir / "e_text.png").write_text("hello")
    out = tmp_path / "res.jsonl"
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt), "--out", out, "-q")
    errors = assert_clean_failure(res, PARTIAL_FAILURE_EXIT_CODE, "c_broken.jpg", "e_text.png")
    assert len(errors.splitlines()) == 2
    recs = read_jsonl(out)
    assert [Path(r["file"]).name for r in recs] == sorted(p.name for p in photo_dir.iterdir())
    bad = {Path(r["file"]).name: r for r in recs if "error" in r}
    assert set(bad) == {"c_broken.jpg", "e_text.png"}
    for r in bad.values():
        assert r["error_type"] == "InputError" and r["exit_code"] == 2 and "\n" not in r["error"]
    good = [r for r in recs if "error" not in r]
    assert len(good) == 4 and all(r["faces"] for r in good)
    assert no_part_files(tmp_path)


def test_all_files_bad_gives_their_common_code(tiny_ckpt, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"")
    (d / "b.jpg").write_text("text")
    res = run_cli("infer", d, *tiny_args(tiny_ckpt), "-q")
    assert_clean_failure(res, 2, "a.jpg", "b.jpg")


def test_existing_out_is_not_clobbered(tiny_ckpt, photo_dir, tmp_path):
    out = tmp_path / "res.jsonl"
    out.write_text("precious\n")
    res = run_cli("infer", photo_dir / "a_hopper.jpg", *tiny_args(tiny_ckpt), "--out", out)
    assert_clean_failure(res, 2, "exists")
    assert "--overwrite" in res.stderr
    assert out.read_text() == "precious\n"
    res = run_cli("infer", photo_dir / "a_hopper.jpg", *tiny_args(tiny_ckpt), "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert read_jsonl(out)[0]["faces"]


def test_non_ascii_and_space_paths(tiny_ckpt, tmp_path):
    d = tmp_path / "fotos größe 写真"
    img = small_image(HOPPER, d / "Grace Hopper é 1.jpg", (96, 112))
    out = d / "résultats ü.jsonl"
    res = run_cli("infer", d, *tiny_args(tiny_ckpt), "--out", out, "-q")
    assert res.exit_code == 0, res.output
    (rec,) = read_jsonl(out)
    assert rec["file"] == str(img) and rec["faces"]
    # and as a glob and as a single file
    res = run_cli("infer", f"{d}/Grace*.jpg", *tiny_args(tiny_ckpt), "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)["file"] == str(img)


def _corrupt_variants(tmp_path: Path, ckpt: Path) -> dict[str, Path]:
    good = ckpt.read_bytes()
    header_len = int.from_bytes(good[:8], "little")
    variants = {
        "random.safetensors": b"\x13\x37garbage" * 50,
        "empty.safetensors": b"",
        "truncated.safetensors": good[: len(good) // 2],
        "bad_header.safetensors": good[:8] + b"{" + b"x" * (header_len - 1) + good[8 + header_len:],
        "photo.safetensors": HOPPER.read_bytes(),
        "text.pt": b"not a torch file",
        "garbage.onnx": b"\x08\x07garbage onnx" * 20,
    }
    out = {}
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def test_corrupt_or_wrong_kind_detector_file_exits_3(tiny_ckpt, photo_dir, tmp_path):
    for name, path in _corrupt_variants(tmp_path, tiny_ckpt).items():
        backend = "onnxruntime" if name.endswith(".onnx") else "torch"
        res = run_cli("infer", photo_dir / "a_hopper.jpg", "--detector", path, "--no-ranker", "--backend", backend)
        assert_clean_failure(res, 3, path.name)


def test_checkpoint_with_a_broken_config_exits_3(tiny_ckpt, photo_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_ckpt))
    for i, cfg in enumerate(['{"kind": "detector", "fpn_channels": "many"}', "[1, 2", '{"kind": "teapot"}']):
        path = tmp_path / f"cfg{i}.safetensors"
        save_file(tensors, str(path), metadata={"rfdeploy.config": cfg, "rfdeploy.format": "1"})
        res = run_cli("infer", photo_dir / "a_hopper.jpg", *tiny_args(path))
        assert_clean_failure(res, 3, path.name)


def test_ranker_passed_as_detector_exits_3(tiny_ranker_ckpt, photo_dir):
    res = run_cli("infer", photo_dir / "a_hopper.jpg", *tiny_args(tiny_ranker_ckpt))
    assert_clean_failure(res, 3, "expected a detector")


def test_a_file_that_is_no_model_exits_3(tiny_ckpt, photo_dir, tmp_path):
    """README: 3 = a model file of the wrong kind; a photo or a text file given as a model is one."""
    other = tmp_path / "model.txt"
    shutil.copy(tiny_ckpt, other)
    res = run_cli("infer", photo_dir / "a_hopper.jpg", *tiny_args(other))
    assert_clean_failure(res, 3, "unknown model file type")
    res = run_cli("infer", photo_dir / "a_hopper.jpg", "--detector", HOPPER, "--no-ranker")
    assert_clean_failure(res, 3, "is not a detector model")
    res = run_cli("infer", photo_dir / "a_hopper.jpg", "--detector", tiny_ckpt, "--backend", "torch", "--ranker", HOPPER)
    assert_clean_failure(res, 3, "is not a ranker model")


def test_interrupted_run_leaves_no_output(tiny_ckpt, photo_dir, tmp_path, monkeypatch):
    from rfdeploy.runtime.pipeline import FacePipeline

    real = FacePipeline.process_path
    calls = []

    def interrupt_after_first(self, path):
        calls.append(Path(path).name)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(FacePipeline, "process_path", interrupt_after_first)
    out = tmp_path / "out" / "res.jsonl"
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt), "--out", out, "-q")
    assert res.exit_code == 130, res.output
    assert "Traceback" not in res.output and "interrupted" in res.stderr
    assert calls == ["a_hopper.jpg", "b_astronaut.png"]
    assert not out.exists()
    assert no_part_files(out.parent)


def test_interrupt_keeps_an_existing_output(tiny_ckpt, photo_dir, tmp_path, monkeypatch):
    from rfdeploy.runtime.pipeline import FacePipeline

    def interrupt(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(FacePipeline, "process_path", interrupt)
    out = tmp_path / "res.jsonl"
    out.write_text("old results\n")
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt), "--out", out, "--overwrite", "-q")
    assert res.exit_code == 130
    assert out.read_text() == "old results\n"
    assert no_part_files(tmp_path)


def test_bundled_models_on_a_directory_with_a_bad_file(tmp_path, monkeypatch, onnx_cache):
    """The default models (onnxruntime, exported once into the cache) through the same error path."""
    monkeypatch.setenv("RFDEPLOY_CACHE", str(onnx_cache))
    d = tmp_path / "in"
    small_image(HOPPER, d / "a.jpg", (160, 192))
    (d / "b.jpg").write_bytes(HOPPER.read_bytes()[:1500])
    out = tmp_path / "res.jsonl"
    res = run_cli("infer", d, "--out", out, "-q")
    assert_clean_failure(res, PARTIAL_FAILURE_EXIT_CODE, "b.jpg")
    good, bad = read_jsonl(out)
    assert "faces" in good and good["width"] == 160
    assert bad["error_type"] == "InputError" and "b.jpg" in bad["file"]
    # a missing ranker with the default detector: clear input error, before any work
    res = run_cli("infer", d / "a.jpg", "--ranker", tmp_path / "nope.safetensors")
    assert_clean_failure(res, 2, "ranker model not found")
