"""Where the workplace's shared data lives: $RFDEPLOY_SHARED_DATA, else a `shared/data` folder
beside the checkout (or above it). Absent outside the workplace: tests that need it skip."""

import os
from pathlib import Path


def find_shared_data() -> Path | None:
    env = os.environ.get("RFDEPLOY_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "data" for p in Path(__file__).resolve().parents]
    return next((c for c in candidates if (c / "README.md").is_file()), None)


SHARED_DATA = find_shared_data()
