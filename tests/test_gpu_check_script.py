"""benchmarks/gpu_check.sh on a machine without a CUDA GPU: it starts, finds no GPU, says so and
exits non-zero without running anything (on a GPU machine the script itself is the check)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: run benchmarks/gpu_check.sh itself")
def test_gpu_check_says_there_is_no_gpu_and_fails(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert "no CUDA GPU is visible" in r.stdout and "nothing was run" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "out").exists()  # no test or benchmark started


def test_gpu_check_names_a_missing_torch(tmp_path):
    """Run with a Python that cannot import torch (an empty, isolated interpreter)."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": str(fake)}, timeout=60)
    assert r.returncode == 5 and "torch is not importable" in r.stdout, (r.stdout, r.stderr)
