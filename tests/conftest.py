import os
from pathlib import Path

import pytest
from shared_data import SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if SHARED_DATA is None:
        pytest.skip("shared data (../shared/data or $RFDEPLOY_SHARED_DATA) not present: only inside the rfdeploy workplace")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
