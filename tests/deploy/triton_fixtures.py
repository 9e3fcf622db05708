"""Shared fixtures of the Triton tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fake_server_env(tmp_path) -> Path:
    """The layout of an nvidia-pytriton environment (what write_triton_repo and the launcher look
    for: the server binary's place and numpy's version), without the 370 MB of the real one."""
    site = tmp_path / "server-env" / "lib" / "python3.11" / "site-packages"
    (site / "pytriton" / "tritonserver" / "bin").mkdir(parents=True)
    (site / "pytriton" / "tritonserver" / "bin" / "tritonserver").write_bytes(b"")
    (site / "numpy-1.26.4.dist-info").mkdir()
    (site / "numpy-1.26.4.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 1.26.4\n")
    return tmp_path / "server-env"
