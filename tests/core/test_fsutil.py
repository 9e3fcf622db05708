"""Atomic output (rfdeploy.core.fsutil): complete with ordinary permissions, or absent."""

from __future__ import annotations

import os
import stat

import pytest

from rfdeploy.core.errors import InputError
from rfdeploy.core.fsutil import AtomicTextFile, atomic_dir, atomic_path


@pytest.fixture(autouse=True)
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_path_and_text_file(tmp_path):
    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "a.bin") == 0o644
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    with AtomicTextFile(tmp_path / "c.txt") as f:
        f.write_line("one")
    assert (tmp_path / "c.txt").read_text() == "one\n" and _mode(tmp_path / "c.txt") == 0o644
    with pytest.raises(InputError, match="exists"):
        AtomicTextFile(tmp_path / "c.txt")
    f = AtomicTextFile(tmp_path / "c.txt", overwrite=True)
    f.write_line("two")
    f.abort()
    assert (tmp_path / "c.txt").read_text() == "one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.txt"]


def test_atomic_dir(tmp_path):
    with atomic_dir(tmp_path / "repo") as tmp:
        (tmp / "m" / "1").mkdir(parents=True)
        (tmp / "m" / "1" / "model.onnx").write_bytes(b"x")
    modes = {p.name: _mode(p) for p in [tmp_path / "repo", *(tmp_path / "repo").rglob("*")]}
    assert modes == {"repo": 0o755, "m": 0o755, "1": 0o755, "model.onnx": 0o644}
    with pytest.raises(InputError, match="not an empty folder"), atomic_dir(tmp_path / "repo") as tmp:
        (tmp / "other").write_text("new")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "repo", replace=True) as tmp:
        (tmp / "other").write_text("new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]
    with atomic_dir(tmp_path / "repo", replace=True) as tmp:
        (tmp / "other").write_text("new")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["other"]
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "repo"]
