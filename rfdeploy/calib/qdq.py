"""Post-processing and checks of explicit Q/DQ models for TensorRT.

TensorRT reads INT8 from QuantizeLinear/DequantizeLinear pairs and accepts only signed int8 with
zero-point 0; DequantizeLinear of an int32 bias is refused by its ONNX parser (FACTS.md).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rfdeploy.export.graph_regions import remove_dead_nodes

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def unquantize_region_inputs(model: onnx.ModelProto, region: set[str] | frozenset[str]) -> int:
    """Make region nodes read the float tensor instead of a Q->DQ copy of it; returns rewired inputs.

    onnxruntime quantizes a Conv's output when it quantizes the Conv, so the heads' last Conv would
    hand int8-rounded logits to the Sigmoid / decode. The Q/DQ stays for non-region consumers.
    """
    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    changed = 0
    for node in graph.node:
        if node.name not in region:
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a weight stored as int8: leave it
            node.input[i] = q.input[0]
            changed += 1
    if changed:
        remove_dead_nodes(model)
    return changed


def qdq_problems(model: onnx.ModelProto, region: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Everything in ``model`` that TensorRT would refuse or that breaks the fp32 region; [] if fine."""
    graph = model.graph
    consts = _constant_values(graph)
    producer = {t: n for n in graph.node for t in n.output}
    problems = []
    for n in graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        if len(n.input) < 3 or n.input[2] not in consts:
            problems.append(f"{n.name}: no constant zero-point (defaults to uint8)")
            continue
        zp = consts[n.input[2]]
        if zp.dtype != np.int8:
            problems.append(f"{n.name}: zero-point type {zp.dtype}, TensorRT needs int8")
        elif np.any(zp != 0):
            problems.append(f"{n.name}: non-zero zero-point")
        if n.op_type == "DequantizeLinear":
            src = consts.get(n.input[0])
            if src is not None and src.dtype != np.int8:
                problems.append(f"{n.name}: dequantizes a {src.dtype} constant (e.g. a bias), TensorRT needs int8")
    for n in graph.node:
        if n.name in region:
            for t in n.input:
                p = producer.get(t)
                if p is not None and p.op_type == "DequantizeLinear":
                    problems.append(f"{n.name} ({n.op_type}) must stay float but reads {p.name}")
    return problems


def unshare_initializers(model: onnx.ModelProto, op_types) -> int:
    """Give every node of ``op_types`` its own copy of initializers it shares with other such nodes;
    returns the copies made.

    onnxruntime's operator-format quantizer quantizes a shared bias once, with the input scale of its
    first consumer, and reuses that int32 bias for every other consumer (whose input scales differ):
    RefineFace's heads read one weight and bias on every pyramid level.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        if n.op_type in op_types:
            for t in dict.fromkeys(n.input):
                if t in inits:
                    users.setdefault(t, []).append(n)
    made = 0
    taken = set(inits)
    for name, nodes in users.items():
        for k, node in enumerate(nodes[1:], 1):
            new = f"{name}_rfd_copy{k}"
            while new in taken:
                new += "_"
            taken.add(new)
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = new
            graph.initializer.append(copy)
            for i, t in enumerate(node.input):
                if t == name:
                    node.input[i] = new
            made += 1
    return made


def initializers_for_constants(model: onnx.ModelProto) -> int:
    """Make Constant-node tensors initializers and let readers of ``Identity(initializer)`` read the
    initializer itself; returns the nodes replaced.

    onnxruntime's quantizers look weights and biases up among the initializers only (the PyTorch
    exporter writes a bias it has seen before as an Identity of the first copy).
    """
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] not in outputs and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            graph.initializer.append(t)
            inits.add(t.name)
            continue
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            alias[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    replaced = len(graph.node) - len(keep)
    if replaced:
        for n in keep:
            for i, t in enumerate(n.input):
                if t in alias:
                    n.input[i] = alias[t]
        del graph.node[:]
        graph.node.extend(keep)
    return replaced
