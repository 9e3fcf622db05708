"""ONNX file handling shared by the FP16 and INT8 converters: checked loading, metadata, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from rfdeploy.core.errors import BuildError, InputError, ModelFileError
from rfdeploy.core.fsutil import atomic_path, sha256_file  # noqa: F401

PRECISION_KEY = "rfdeploy.precision"
_PROTOBUF_LIMIT = 2**31 - 1


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model: missing path -> InputError, not a valid ONNX model -> ModelFileError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    if not p.is_file():
        raise InputError(f"model path is not a file: {p}")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf raises DecodeError, onnx raises its own types
        raise ModelFileError(f"{p} is not a readable ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node or not model.graph.output:
        raise ModelFileError(f"{p} is not a usable ONNX model (empty graph)")
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace ``metadata_props`` with ``props`` (keeps insertion order)."""
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def check_not_reduced(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Refuse a model that is already fp16 / int8: converting twice silently loses accuracy."""
    precision = read_metadata(model).get(PRECISION_KEY, "fp32")
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
