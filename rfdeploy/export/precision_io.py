"""ONNX file handling shared by the FP16 and INT8 converters: refusing a file converted before,
checked node names, verification, atomic writes (loading and metadata: rfdeploy.core)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from rfdeploy.core import metadata
from rfdeploy.core.errors import BuildError, InputError, ModelFileError
from rfdeploy.core.fsutil import atomic_path

_PROTOBUF_LIMIT = 2**31 - 1


def check_not_reduced(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Refuse a model that is already fp16 / int8: converting twice silently loses accuracy."""
    precision = metadata.onnx_metadata(model).get(metadata.PRECISION, "fp32")
    if precision != "fp32":
        raise ModelFileError(f"{path} is already converted (rfdeploy.precision={precision}); start from the fp32 export")
    lowp = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8}
    if any(i.data_type in lowp for i in model.graph.initializer) or any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node
    ):
        raise ModelFileError(f"{path} already holds fp16/int8 tensors; start from the fp32 export")


def save_onnx_atomic(model: onnx.ModelProto, dst: str | os.PathLike) -> Path:
    """Write ``model`` to ``dst`` through a temporary file in the same folder, so no half file remains."""
    dst = Path(dst)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise BuildError(f"the converted model is over 2 GB and cannot be stored in one ONNX file: {dst}")
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst


def check_node_names(model: onnx.ModelProto, names, what: str) -> None:
    """User-named nodes must exist in the model (InputError otherwise)."""
    missing = sorted(set(names or ()) - {n.name for n in model.graph.node})
    if missing:
        raise InputError(f"{what}: no node named {missing[:5]} in the model")




def verify_model(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """onnx.checker plus strict shape/type inference; returns the inferred model. Raises BuildError."""
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        raise BuildError(f"{what} produced an invalid ONNX model: {e}") from e
