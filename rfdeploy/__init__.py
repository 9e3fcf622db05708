"""rfdeploy: RefineFace + CRFace from PyTorch checkpoints to ONNX, TensorRT and a tiled runtime."""

__version__ = "0.1.0"
