"""Facts about an ONNX file that engine building and `rfdeploy info` both need."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

from rfdeploy.core.errors import InputError, ModelFileError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def load_onnx(path: str | Path, *, error_cls: type = ModelFileError):
    """Load the graph (external weights are not read: only shapes and types are needed)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"ONNX file not found: {p}")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds for a corrupt file
        raise error_cls(f"{p} is not a readable ONNX model ({type(e).__name__}: {e})",
                        hint="re-export the model; the file may be truncated or not ONNX") from e


def _all_nodes(graph) -> Iterator:
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.g is not None and len(a.g.node):
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def detect_precision(model) -> str:
    """'int8' when the graph has Q/DQ nodes, 'fp16' when it computes in float16 anywhere (mixed
    precision included), 'bf16' likewise, else 'fp32'. Strongly typed TensorRT takes exactly this."""
    from onnx import TensorProto

    nodes = list(_all_nodes(model.graph))
    for f in model.functions:
        nodes.extend(f.node)
    if any(n.op_type in QDQ_OPS for n in nodes):
        return "int8"

    def low_types() -> Iterator[int]:
        for init in model.graph.initializer:
            yield init.data_type
        for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
            yield vi.type.tensor_type.elem_type
        for n in nodes:
            if n.op_type in ("Cast", "CastLike"):
                for a in n.attribute:
                    if a.name == "to":
                        yield a.i
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        yield a.t.data_type

    types = set(low_types())
    if TensorProto.FLOAT16 in types:
        return "fp16"
    if TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"


def _dims(vi) -> list[int | str]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _dtype_name(elem_type: int) -> str:
    from onnx import helper

    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # noqa: BLE001 - e.g. bfloat16/float8 have no numpy type
        from onnx import TensorProto

        return TensorProto.DataType.Name(elem_type).lower()


def graph_io(model) -> dict[str, list[dict]]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [
        {"name": v.name, "shape": _dims(v), "dtype": _dtype_name(v.type.tensor_type.elem_type)}
        for v in model.graph.input
        if v.name not in inits
    ]
    outputs = [
        {"name": v.name, "shape": _dims(v), "dtype": _dtype_name(v.type.tensor_type.elem_type)}
        for v in model.graph.output
    ]
    return {"inputs": inputs, "outputs": outputs}


def metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def parameter_count(model) -> int:
    return sum(math.prod(i.dims) for i in model.graph.initializer)
