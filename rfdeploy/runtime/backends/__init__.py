"""Inference backends behind one small interface: torch, onnxruntime, TensorRT.

A runner (``base.Runner``) has a clear lifecycle (``activate`` -> ``infer`` ... -> ``deactivate``),
takes and returns named numpy arrays, and exposes the model file's own metadata (the
preprocessing contract and config), which it never copies or invents. ``selection.open_runner``
picks the runner for a model file.
"""
