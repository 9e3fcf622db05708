import os
from pathlib import Path

import pytest

# ../shared/data beside the checkout; RFDEPLOY_SHARED_DATA overrides
SHARED_DATA = Path(os.environ.get("RFDEPLOY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared data not present at {SHARED_DATA} (only inside the rfdeploy workplace)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
