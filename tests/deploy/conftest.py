from __future__ import annotations

import pytest

from tests.deploy.retina import RETINA_ONNX


@pytest.fixture(scope="session")
def retina_onnx():
    if not RETINA_ONNX.is_file():
        pytest.skip(f"{RETINA_ONNX} not present (third-party model from the shared data folder)")
    return RETINA_ONNX
