"""training/average_checkpoints.py: the interpolation, and the refusals."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from repo_scripts import load_script


def _module():
    return load_script("training/average_checkpoints.py")


def _write(path, w, steps, **cfg):
    config = {"name": "tiny", "head_channels": 16, "output_score_threshold": 0.9, **cfg}
    save_file({"conv.weight": w, "bn.num_batches_tracked": torch.tensor(steps)}, str(path),
              metadata={"rfdeploy.config": json.dumps(config)})


def test_interpolates_floats_and_keeps_b_for_the_rest(tmp_path):
    mod = _module()
    _write(tmp_path / "a.safetensors", torch.zeros(2, 3, dtype=torch.float16), 5)
    _write(tmp_path / "b.safetensors", torch.full((2, 3), 4.0, dtype=torch.float16), 9, output_score_threshold=0.94)
    out = tmp_path / "mix.safetensors"
    assert mod.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--alpha", "0.25",
                     "-o", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        w = f.get_tensor("conv.weight")
        assert w.dtype == torch.float16 and torch.equal(w, torch.full((2, 3), 1.0, dtype=torch.float16))
        assert int(f.get_tensor("bn.num_batches_tracked")) == 9
        assert json.loads(f.metadata()["rfdeploy.config"])["output_score_threshold"] == 0.94


def test_refuses_other_architectures_and_bad_alpha(tmp_path, capsys):
    mod = _module()
    _write(tmp_path / "a.safetensors", torch.zeros(2, 3), 1)
    _write(tmp_path / "b.safetensors", torch.zeros(2, 3), 1, head_channels=32)
    out = tmp_path / "mix.safetensors"
    assert mod.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "-o", str(out)]) == 2
    assert "different architectures" in capsys.readouterr().err and not out.exists()
    assert mod.main([str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors"), "--alpha", "1.5",
                     "-o", str(out)]) == 2
    assert not out.exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert mod.main([str(bad), str(tmp_path / "a.safetensors"), "-o", str(out)]) == 2
    assert "error:" in capsys.readouterr().err and not out.exists()
