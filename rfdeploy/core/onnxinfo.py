"""Facts about an ONNX file: its signature (inputs and outputs with their dims and types), which
dims are dynamic, its precision, metadata and size; the checked loader every stage uses, and the
rewrite that frees fixed image dims. ``onnx`` is imported only inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rfdeploy.core.errors import InputError, ModelFileError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def load_onnx(path: str | Path, *, weights: bool = True, error_cls: type = ModelFileError):
    """Load an ONNX model: a missing path is an InputError, a file that is not ONNX (or a graph
    without nodes or outputs) an ``error_cls`` (ModelFileError). ``weights=False`` reads the graph
    without external weight files, enough for shapes, types and metadata."""
    import onnx

    p = Path(path)
    if not p.exists():
        raise InputError(f"ONNX file not found: {p}")
    if not p.is_file():
        raise InputError(f"{p} is not a file")
    try:
        model = onnx.load(str(p), load_external_data=weights)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds for a corrupt file
        raise error_cls(f"{p} is not a readable ONNX model ({type(e).__name__}: {e})",
                        hint="re-export the model; the file may be truncated or not ONNX") from e
    if not model.graph.node or not model.graph.output:
        raise error_cls(f"{p} is not a usable ONNX model (empty graph)")
    return model


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


Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: ``shape`` holds ints for fixed dims, the name of a symbolic dim, or
    None for an unnamed dynamic one; ``dtype`` a numpy name (float32, ...)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}]:{self.dtype}"

    @property
    def static_shape(self) -> tuple[int | None, ...]:
        """The shape with every dim that is not a fixed positive size as None."""
        return tuple(d if isinstance(d, int) and d > 0 else None for d in self.shape)

    def to_dict(self) -> dict:
        """``{name, shape, dtype}`` with unnamed dynamic dims as "?" (what ``rfdeploy info`` prints)."""
        return {"name": self.name, "shape": ["?" if d is None else d for d in self.shape], "dtype": self.dtype}


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == name), None)

    def describe(self) -> str:
        ins = ", ".join(str(t) for t in self.inputs) or "none"
        outs = ", ".join(str(t) for t in self.outputs) or "none"
        return f"inputs: {ins}; outputs: {outs}"


def _dtype_name(elem_type: int) -> str:
    from onnx import helper

    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # noqa: BLE001 - e.g. bfloat16/float8 have no numpy type
        from onnx import TensorProto

        try:
            return TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return str(elem_type)


def tensor_info(value_info) -> TensorInfo:
    t = value_info.type.tensor_type
    dims: list[Dim] = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return TensorInfo(value_info.name, tuple(dims), _dtype_name(t.elem_type))


def read_signature(model) -> ModelSignature:
    """Inputs (initializers excluded: old exports list weights as graph inputs) and outputs."""
    weights = {init.name for init in model.graph.initializer}
    inputs = tuple(tensor_info(v) for v in model.graph.input if v.name not in weights)
    outputs = tuple(tensor_info(v) for v in model.graph.output)
    return ModelSignature(inputs, outputs)


def declared_inputs(model) -> dict[str, tuple[int | None, ...]]:
    """Input name -> declared shape, None for every dynamic dim."""
    return {t.name: t.static_shape for t in read_signature(model).inputs}


def graph_io(model) -> dict[str, list[dict]]:
    """The signature as ``{"inputs": [{name, shape, dtype}], "outputs": [...]}``."""
    sig = read_signature(model)
    return {"inputs": [t.to_dict() for t in sig.inputs], "outputs": [t.to_dict() for t in sig.outputs]}


def rename_dims(value_info, names: dict[int, str]) -> None:
    """Make the dims at the given indices symbolic, with these names."""
    dims = value_info.type.tensor_type.shape.dim
    for index, name in names.items():
        if index < len(dims):
            dims[index].Clear()
            dims[index].dim_param = name


def make_spatial_dims_dynamic(model, input_name: str):
    """Replace fixed batch/height/width dims of the image input and of every 4-D output by names.

    Some exports fix the input to a placeholder size; onnxruntime then refuses other sizes.
    """
    image_inputs = [v for v in model.graph.input if v.name == input_name]
    if not image_inputs:
        raise ModelFileError(f"the model has no input named {input_name!r}")
    rename_dims(image_inputs[0], {0: "batch", 2: "height", 3: "width"})
    for out in model.graph.output:
        if len(out.type.tensor_type.shape.dim) == 4:
            rename_dims(out, {0: "batch", 2: f"{out.name}_h", 3: f"{out.name}_w"})
    # Stale intermediate shapes would contradict the new input size.
    del model.graph.value_info[:]
    return model


def opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def parameter_count(model) -> int:
    return sum(math.prod(i.dims) for i in model.graph.initializer)
