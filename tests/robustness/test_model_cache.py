"""A checkpoint from the user is exported to ONNX once, keyed by its content: new weights under the
same path are never served from the old export."""

from __future__ import annotations

import json
import os

from conftest import HOPPER, run_cli, small_image, tiny_detector

from rfdeploy.models.checkpoint import save_checkpoint


def _faces(out) -> list:
    (line,) = out.read_text().splitlines()
    return json.loads(line)["faces"]


def test_changed_checkpoint_is_exported_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RFDEPLOY_CACHE", str(cache))
    img = small_image(HOPPER, tmp_path / "in" / "a.jpg", (96, 112))
    ckpt = tmp_path / "model.safetensors"
    model_a, model_b = tiny_detector(seed=0), tiny_detector(seed=1)

    def infer(tag: str):
        out = tmp_path / f"{tag}.jsonl"
        res = run_cli("infer", img, "--detector", ckpt, "--no-ranker", "--backend", "onnxruntime",
                      "--score-thr", "0.3", "--out", out)
        assert res.exit_code == 0, res.output
        return _faces(out), "exported model.safetensors to ONNX" in res.stderr

    save_checkpoint(model_a, ckpt)
    bytes_a = ckpt.read_bytes()
    faces_a, exported = infer("a1")
    assert exported and faces_a
    assert infer("a2") == (faces_a, False)  # same content: served from the cache

    stat = os.stat(ckpt)
    save_checkpoint(model_b, ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same path, same mtime: only the bytes differ
    faces_b, exported = infer("b")
    assert exported, "new weights must be exported, not taken from the cache"
    assert faces_b != faces_a
    assert len(list((cache / "onnx").glob("model-*.onnx"))) == 2

    # the torch backend on the same file agrees with what onnxruntime reported for it
    res = run_cli("infer", img, "--detector", ckpt, "--no-ranker", "--backend", "torch", "--score-thr", "0.3", "-q")
    torch_faces = json.loads(res.stdout)["faces"]
    assert len(torch_faces) == len(faces_b)
    for f, g in zip(torch_faces, faces_b):
        assert max(abs(x - y) for x, y in zip(f["box"], g["box"])) < 0.05 and abs(f["score"] - g["score"]) < 1e-3

    ckpt.write_bytes(bytes_a)  # back to the first file: its export is reused
    assert infer("a3") == (faces_a, False)
