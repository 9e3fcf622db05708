"""A model file from the user is exported to ONNX once, keyed by its content: new weights under the
same path are never served from the old export."""

from __future__ import annotations

import json
import os

from robust_helpers import HOPPER, run_cli, tiny_ranker

from rfdeploy.models.checkpoint import save_checkpoint


def test_changed_checkpoint_is_exported_again(tmp_path, monkeypatch, onnx_cache):
    # The bundled detector (its export shared with the other bundled-model test) and a user's
    # ranker checkpoint that changes under the same path; default backend: onnxruntime.
    monkeypatch.setenv("RFDEPLOY_CACHE", str(onnx_cache))
    img = HOPPER  # a real face, so the detector hands the ranker candidates
    ckpt = tmp_path / "my_ranker.safetensors"

    def infer(tag: str, backend: str = "auto"):
        out = tmp_path / f"{tag}.jsonl"
        res = run_cli("infer", img, "--ranker", ckpt, "--score-thr", "0", "--backend", backend, "--out", out)
        assert res.exit_code == 0, res.output
        (line,) = out.read_text().splitlines()
        return json.loads(line)["faces"], "exported my_ranker.safetensors to ONNX" in res.stderr

    save_checkpoint(tiny_ranker(seed=0), ckpt)
    bytes_a = ckpt.read_bytes()
    faces_a, exported = infer("a1")
    assert exported and faces_a
    assert infer("a2") == (faces_a, False)  # same content: served from the cache

    stat = os.stat(ckpt)
    save_checkpoint(tiny_ranker(seed=1), ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same path, same mtime: only the bytes differ
    faces_b, exported = infer("b")
    assert exported, "new weights must be exported, not taken from the cache"
    assert [f["score"] for f in faces_b] != [f["score"] for f in faces_a]
    assert len(list((onnx_cache / "onnx").glob("my_ranker-*.onnx"))) == 2

    # the torch backend on the same files gives what onnxruntime gave for the new weights
    torch_b, _ = infer("b_torch", backend="torch")
    assert len(torch_b) == len(faces_b)
    for f, g in zip(torch_b, faces_b):
        assert max(abs(x - y) for x, y in zip(f["box"], g["box"])) < 0.05 and abs(f["score"] - g["score"]) < 2e-3

    ckpt.write_bytes(bytes_a)  # the first file again: its export is reused
    assert infer("a3") == (faces_a, False)
