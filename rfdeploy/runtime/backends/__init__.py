"""Inference backends behind one small interface: torch, onnxruntime, TensorRT.

A runner has a clear lifecycle (``activate`` -> ``infer`` ... -> ``deactivate``), takes and returns
named numpy arrays, and exposes the model file's own metadata (the preprocessing contract and
config), which it never copies or invents.
"""

from rfdeploy.runtime.backends.base import Runner, open_runner

__all__ = ["Runner", "open_runner"]
