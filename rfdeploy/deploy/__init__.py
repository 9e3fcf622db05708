"""Serving rfdeploy beyond one process: Triton model repositories (triton.py).

Nothing here imports Triton; the repository's Python model (triton_model.py) runs inside Triton.
"""
