"""Run the rfdeploy command line as if torch and the other extras were not installed.

    python tests/no_torch.py infer rfdeploy/assets/astronaut.jpg

An import hook, installed before rfdeploy is imported, answers every import of the blocked
packages (torch, torchvision, scipy, av, onnxslim) as pip would leave it without the extras: a
ModuleNotFoundError, from ``import`` and ``importlib.util.find_spec`` alike. Each attempt is also
recorded, even where the caller catches the error and carries on, and printed to stderr at exit as
one line ``no_torch: attempted [...] loaded [...]``, so a test sees an import that a fallback would
hide; ``loaded`` names the heavy base packages the run imported (onnx: about a second of start-up).
"""

from __future__ import annotations

import atexit
import importlib.abc
import sys

BLOCKED = ("torch", "torchvision", "scipy", "av", "onnxslim")
WATCHED = ("onnx",)
ATTEMPTS: list[str] = []


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _report() -> None:
    loaded = [m for m in WATCHED if m in sys.modules]
    print(f"no_torch: attempted {sorted(set(ATTEMPTS))} loaded {loaded}", file=sys.stderr, flush=True)


def run_without_torch(*args, cache, timeout: int = 600):
    """Run ``rfdeploy *args`` so, in a fresh process with its caches under ``cache``:
    (process, imports of blocked packages attempted, watched packages loaded)."""
    import json
    import os
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, RFDEPLOY_CACHE=str(cache), RFDEPLOY_ENGINE_CACHE=str(Path(cache) / "engines"))
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *map(str, args)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=timeout)
    m = re.search(r"^no_torch: attempted (\[.*\]) loaded (\[.*\])$", p.stderr, re.M)
    assert m, f"the import hook did not report (rc {p.returncode}):\n{p.stderr[-3000:]}"
    return p, json.loads(m.group(1).replace("'", '"')), json.loads(m.group(2).replace("'", '"'))


if __name__ == "__main__":
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:  # e.g. a sitecustomize: the test would prove nothing
        sys.exit(f"no_torch: {already} imported before the hook")
    sys.meta_path.insert(0, _Blocker())
    atexit.register(_report)
    sys.argv = ["rfdeploy", *sys.argv[1:]]
    from rfdeploy.cli import main

    main()
