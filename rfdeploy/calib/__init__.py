"""INT8 calibration: explicit Q/DQ ONNX files for TensorRT (see rfdeploy.calib.calibrate)."""

from rfdeploy.calib.api import CalibrationReport, calibrate

__all__ = ["CalibrationReport", "calibrate"]
