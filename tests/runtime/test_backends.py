"""Which runner a model file gets (rfdeploy.runtime.backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfdeploy.core.errors import ModelFileError
from rfdeploy.runtime.backends.base import model_kind
from rfdeploy.runtime.backends.selection import open_runner


def test_model_kinds_by_suffix():
    assert [model_kind(Path(n)) for n in ("d.onnx", "d.ENGINE", "d.plan", "d.safetensors", "d.pt")] == [
        "onnx", "engine", "engine", "checkpoint", "checkpoint"]


def test_a_file_of_unknown_kind_is_a_model_file_error(tmp_path):
    # a model file of the wrong kind (exit 3), as for every other unusable model file
    with pytest.raises(ModelFileError, match="unknown model file type '.txt'") as e:
        model_kind(tmp_path / "faces.txt")
    assert e.value.exit_code == 3 and ".onnx" in e.value.hint
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError, match="unknown model file type"):
        open_runner(weights)
