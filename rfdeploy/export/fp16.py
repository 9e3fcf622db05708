"""FP32 ONNX -> mixed-precision FP16 ONNX (float32 inputs/outputs, decode math kept in float32).

TensorRT 11 and TensorRT-RTX are strongly typed: the precision of every layer is the precision
written in the ONNX file, so FP16 engines are built from an FP16 ONNX made here.

Two converters are supported:

* ``onnxconverter``: ``onnxconverter_common.float16.convert_float_to_float16`` with an explicit block
  list. It is a plain dependency of rfdeploy and was measured to give FP16 files that run on
  onnxruntime CPU and build with TensorRT-RTX (rel. error 2.4e-4 on a ResNet-18+FPN detector).
* ``autocast``: NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``),
  NVIDIA's recommended tool. It is used only when ``modelopt`` is importable, because
  ``pip install nvidia-modelopt[onnx]`` pulls ``onnxruntime-gpu`` and ``cupy``; installed beside the
  CPU ``onnxruntime`` the two packages overwrite each other's ``onnxruntime`` module, which breaks
  CPU inference and the tests. Install it in a separate environment to use it.

``method="auto"`` picks AutoCast when importable, else onnxconverter. Either way the same region
analysis (rfdeploy.export.graph_regions) decides which nodes stay in float32, and the result is
checked: onnx.checker, strict type inference, and every kept node really reads float32 inputs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field

import onnx

from rfdeploy.core.errors import BackendUnavailableError, BuildError
from rfdeploy.core.metadata import FP16_METHOD, PRECISION, onnx_metadata, set_onnx_metadata
from rfdeploy.core.onnxinfo import load_onnx
from rfdeploy.export.graph_regions import (
    SENSITIVE_OPS,
    ensure_node_names,
    find_fp32_region,
    remove_dead_nodes,
)
from rfdeploy.export.precision_io import check_node_names, check_not_reduced, save_onnx_atomic, verify_model

METHODS = ("auto", "autocast", "onnxconverter")
DEFAULT_KEEP_FP32_OPS = SENSITIVE_OPS
# Constants are clamped to this by the converter: the fp16 maximum, not the converter's 1e4 default.
_FP16_MAX_FINITE = 65504.0
_FP16_MIN_POSITIVE = 2.0**-24


@dataclass
class Fp16Report:
    src: str
    dst: str
    method: str
    fp32_nodes: list[str]
    fp32_reasons: dict[str, int]
    fp16_nodes: int
    cast_nodes: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def modelopt_available() -> bool:
    return importlib.util.find_spec("modelopt") is not None


def _resolve_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "autocast" if modelopt_available() else "onnxconverter"
    if method == "autocast" and not modelopt_available():
        raise BackendUnavailableError(
            "method='autocast' needs NVIDIA ModelOpt, which is not importable",
            hint="install nvidia-modelopt[onnx] in a separate environment (it replaces the CPU onnxruntime), "
            "or use method='onnxconverter'",
        )
    return method


def _untie_shared_constants(model: onnx.ModelProto, keep: set[str]) -> None:
    """Give fp32-kept consumers their own copy of constants shared with fp16 consumers.

    A shared initializer would otherwise be converted once for everybody (the converter keeps it
    fp32 for the blocked node and then feeds fp32 into an fp16 node, or rounds anchors to fp16).
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    inits = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for name, users in consumers.items():
        kept = [u for u in users if u.name in keep]
        if not kept or len(kept) == len(users):
            continue
        if name in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}__fp32"
            graph.initializer.append(copy)
        elif name in const_nodes and const_nodes[name].name not in keep:
            src = const_nodes[name]
            copy_node = onnx.NodeProto()
            copy_node.CopyFrom(src)
            copy_node.name = f"{src.name}__fp32"
            copy_node.output[0] = f"{name}__fp32"
            graph.node.insert(list(graph.node).index(src) + 1, copy_node)
            keep.add(copy_node.name)
        else:
            continue
        for u in kept:
            for i, t in enumerate(u.input):
                if t == name:
                    u.input[i] = f"{name}__fp32"


def _fold_cast_roundtrips(model: onnx.ModelProto) -> int:
    """Remove fp32 -> Cast(fp16) -> Cast(fp32) chains: they only round values (e.g. raw inputs)."""
    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.input)}
    types.update({i.name: i.data_type for i in graph.initializer})

    def cast_to(n: onnx.NodeProto) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    rewires: dict[str, str] = {}
    for n in graph.node:
        if cast_to(n) != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(n.input[0])
        if first is None or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        src = first.input[0]
        if types.get(src) == onnx.TensorProto.FLOAT:
            rewires[n.output[0]] = src
    graph_outputs = {o.name for o in graph.output}
    rewires = {k: v for k, v in rewires.items() if k not in graph_outputs}
    for n in graph.node:
        for i, t in enumerate(n.input):
            if t in rewires:
                n.input[i] = rewires[t]
    remove_dead_nodes(model)
    return len(rewires)


def _restore_float_outputs(model: onnx.ModelProto, float_outputs: set[str]) -> None:
    """Give back float32 to graph outputs the converter turned into fp16.

    onnxconverter-common retypes a graph output produced by a kept (fp32) node to fp16 and feeds it
    through Cast(fp16), even with keep_io_types. The Cast is dropped so the fp32 value is the output.
    """
    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    for out in graph.output:
        if out.name not in float_outputs or out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        cast = producer.get(out.name)
        if cast is not None and cast.op_type == "Cast":
            inner = cast.input[0]
            graph.node.remove(cast)
            for n in graph.node:
                for i, t in enumerate(n.output):
                    if t == inner:
                        n.output[i] = out.name
                for i, t in enumerate(n.input):
                    if t == inner:
                        n.input[i] = out.name
        else:  # not the known pattern: cast back explicitly
            src = f"{out.name}__fp16"
            for n in graph.node:
                for i, t in enumerate(n.output):
                    if t == out.name:
                        n.output[i] = src
                for i, t in enumerate(n.input):
                    if t == out.name:
                        n.input[i] = src
            graph.node.append(onnx.helper.make_node("Cast", [src], [out.name], to=onnx.TensorProto.FLOAT,
                                                    name=f"{out.name}__to_fp32"))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    stale = [vi for vi in graph.value_info if vi.name in float_outputs]
    for vi in stale:
        graph.value_info.remove(vi)


def infer_fresh(model: onnx.ModelProto, strict_mode: bool = False) -> onnx.ModelProto:
    """Shape inference from scratch: drop the stored ``value_info`` first, then infer.

    Exported files can hold several ``value_info`` entries for one tensor (the exporter's and the
    simplifier's). The converter retypes only the first one it finds, so a stale float32 duplicate
    survives next to the fp16 one and strict type inference then rejects the graph (seen on the
    ranker as a Cast/Resize elem-type mismatch). Inference is the source of truth for types here.
    ``strict_mode``: a type conflict raises instead of being skipped.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(stripped, strict_mode=strict_mode)


def fp32_violations(model: onnx.ModelProto, nodes: set[str] | frozenset[str]) -> list[str]:
    """Nodes in ``nodes`` that read an fp16 tensor (needs an inferred model); empty when correct."""
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.input)}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in graph.output})
    types.update({i.name: i.data_type for i in graph.initializer})
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    bad = []
    for n in graph.node:
        if n.name in nodes and any(types.get(t) == onnx.TensorProto.FLOAT16 for t in n.input):
            bad.append(n.name)
    return bad


def _convert_onnxconverter(model: onnx.ModelProto, keep_nodes: set[str], keep_ops: set[str]) -> onnx.ModelProto:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # truncation warnings for tiny weights (below fp16 subnormals) are expected and harmless
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(
            model,
            min_positive_val=_FP16_MIN_POSITIVE,
            max_finite_val=_FP16_MAX_FINITE,
            keep_io_types=True,
            op_block_list=sorted(keep_ops),
            node_block_list=sorted(keep_nodes),
        )


def _convert_autocast(model: onnx.ModelProto, keep_nodes: set[str], keep_ops: set[str]) -> onnx.ModelProto:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with tempfile.TemporaryDirectory(prefix="rfdeploy-autocast-") as tmp:
        src = os.path.join(tmp, "model.onnx")
        onnx.save(model, src)
        return convert_to_mixed_precision(
            onnx_path=src,
            low_precision_type="fp16",
            # AutoCast takes regular expressions for node names
            nodes_to_exclude=[f"^{re.escape(n)}$" for n in sorted(keep_nodes)],
            op_types_to_exclude=sorted(keep_ops),
            init_max=_FP16_MAX_FINITE,
            keep_io_types=True,
        )


def convert_fp16(
    src_onnx: str | os.PathLike,
    dst_onnx: str | os.PathLike,
    *,
    keep_fp32_ops: set[str] | frozenset[str] = DEFAULT_KEEP_FP32_OPS,
    keep_fp32_nodes: set[str] | None = None,
    method: str = "auto",
) -> Fp16Report:
    """Write an FP16 version of ``src_onnx`` to ``dst_onnx`` and report what stayed in float32.

    Inputs and outputs stay float32 (the runtime feeds the same arrays). Kept in float32: the
    post-network region found by ``find_fp32_region`` (decode math, anchors, TopK, box-coordinate
    inputs), every node of an op type in ``keep_fp32_ops``, nodes reading constants outside the fp16
    range, and the named ``keep_fp32_nodes``. Metadata is copied and ``rfdeploy.precision=fp16`` added.

    Raises InputError (missing file, unknown node in ``keep_fp32_nodes``), ModelFileError (not ONNX, or already reduced precision),
    BackendUnavailableError (``method="autocast"`` without ModelOpt), BuildError (conversion failed
    or produced a model with fp16 inside the kept region); ``dst_onnx`` is then left untouched.
    """
    chosen = _resolve_method(method)
    model = load_onnx(src_onnx)
    check_not_reduced(model, src_onnx)
    metadata = onnx_metadata(model)
    check_node_names(model, keep_fp32_nodes, "keep_fp32_nodes")
    ensure_node_names(model)
    try:
        model = infer_fresh(model)
        region = find_fp32_region(
            model, sensitive_ops=frozenset(keep_fp32_ops), check_fp16_range=True,
            extra_nodes=frozenset(keep_fp32_nodes or ()),
        )
    except ValueError as e:
        raise BuildError(f"cannot analyse {src_onnx}: {e}") from e
    keep = set(region.nodes)
    float_outputs = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    _untie_shared_constants(model, keep)
    model = infer_fresh(model)  # the converter places casts using value_info

    try:
        if chosen == "autocast":
            converted = _convert_autocast(model, keep, set(keep_fp32_ops))
        else:
            converted = _convert_onnxconverter(model, keep, set(keep_fp32_ops))
    except Exception as e:
        raise BuildError(f"fp16 conversion ({chosen}) of {src_onnx} failed: {e}") from e
    _restore_float_outputs(converted, float_outputs)
    _fold_cast_roundtrips(converted)

    set_onnx_metadata(converted, {**metadata, PRECISION: "fp16", FP16_METHOD: chosen}, replace=True)
    checked = verify_model(converted, f"fp16 conversion ({chosen})")
    bad = fp32_violations(checked, keep)
    if bad:
        raise BuildError(f"fp16 conversion ({chosen}) left {len(bad)} kept node(s) reading fp16: {bad[:5]}")
    report_warnings = []
    for io in list(checked.graph.input) + list(checked.graph.output):
        if io.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            raise BuildError(f"fp16 conversion changed the type of model input/output {io.name!r}")
    save_onnx_atomic(converted, dst_onnx)
    names = {n.name for n in converted.graph.node}
    kept_present = sorted(n for n in keep if n in names)
    if len(kept_present) < len(keep):
        report_warnings.append(f"{len(keep) - len(kept_present)} kept node(s) were removed by the converter")
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast")
    return Fp16Report(
        src=str(src_onnx),
        dst=str(dst_onnx),
        method=chosen,
        fp32_nodes=kept_present,
        fp32_reasons=region.counts(),
        fp16_nodes=len(converted.graph.node) - len(kept_present) - casts,
        cast_nodes=casts,
        warnings=report_warnings,
    )
