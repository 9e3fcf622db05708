"""Serving rfdeploy beyond one process: Triton model repositories (triton.py) and Triton's CPU
server from nvidia-pytriton (triton_server.py).

Nothing here imports Triton; the repository's Python models (triton_model.py, triton_onnx_model.py,
with triton_env.py for their Python paths) run inside Triton.
"""
