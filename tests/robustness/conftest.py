"""Fixtures for the robustness tests; the helpers live in robust_helpers.py."""

from robust_helpers import _one_thread, onnx_cache, photo_dir, tiny_ckpt, tiny_ranker_ckpt  # noqa: F401
