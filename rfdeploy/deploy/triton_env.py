"""Python paths for the models of an rfdeploy Triton repository (copied beside each model.py as
``rfdeploy_env.py``; model.py imports it before anything else).

Triton's Python backend runs each model in a stub process that embeds the system's libpython and
ignores PYTHONPATH and virtual environments. So each model.py starts with ``import rfdeploy_env``,
which reads ``python_env.json`` beside it (written by ``rfdeploy triton-repo --cpu``) and

* refuses a stub of another Python version than the environment's (its compiled packages would not
  load),
* takes ``numpy`` from the server's environment when one is named: the stub hands tensors over with
  numpy 1's array layout (nvidia-pytriton pins numpy < 2), while rfdeploy's environment may hold
  numpy 2; only numpy comes from there, every other package from rfdeploy's environment,
* puts rfdeploy's environment first on ``sys.path`` (ahead of the system's dist-packages), through
  :func:`site.addsitedir`, so its ``.pth`` files (an editable install) take effect.

Without ``python_env.json`` nothing changes: rfdeploy is installed in the server's own Python (the
GPU repository in NVIDIA's Triton container). Standard library only: nothing else imports yet.
"""

import importlib.abc
import importlib.machinery
import json
import site
import sys
from pathlib import Path


class _NumpyFrom(importlib.abc.MetaPathFinder):
    """Finds the top-level ``numpy`` package in one folder only; its submodules follow its
    ``__path__`` (and its bundled libraries its RPATH), so all of numpy comes from there."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "numpy":
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])


def setup(folder) -> dict | None:
    """Apply ``folder/python_env.json``; returns its content (None when there is none)."""
    f = Path(folder) / "python_env.json"
    if not f.is_file():
        return None
    env = json.loads(f.read_text(encoding="utf-8"))
    want = tuple(env.get("python") or ())
    if want and tuple(sys.version_info[:2]) != want:
        raise RuntimeError(
            f"this Triton Python stub runs Python {sys.version_info[0]}.{sys.version_info[1]}, but the models' "
            f"environment is Python {want[0]}.{want[1]}: start the server with the stub for that version")
    if env.get("numpy_site") and "numpy" not in sys.modules:
        sys.meta_path.insert(0, _NumpyFrom(env["numpy_site"]))
    before = list(sys.path)
    for p in env.get("site_packages") or ():
        site.addsitedir(p)
    # ahead of the system's dist-packages, which the stub's Python searches first
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    return env


ENV = setup(Path(__file__).resolve().parent)
