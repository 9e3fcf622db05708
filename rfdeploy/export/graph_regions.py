"""Which nodes of an exported model must stay in float32: shared by FP16 conversion and INT8 calibration.

The detector and ranker ONNX files end in decode math (Sigmoid on logits, the STC filter, Exp in
box decoding, anchor arithmetic in input pixels, TopK / Gather). That part is cheap but numerically
sensitive: fp16 has ~3 significant digits (a box edge at x=4000 moves in steps of 2 px), and an int8
Sigmoid input wipes out score ranking. The "post-network" region is therefore found from the graph
itself, so it follows whatever the exporter emits:

* ``after_last_compute``: nodes from which no Conv/ConvTranspose/Gemm/MatMul is reachable
  downstream: everything after the heads' last convolutions (flatten/concat of head outputs, the
  decode, TopK, Clip of the ranker's residual) plus side computations such as anchors built from
  ``Shape`` of a feature map;
* ``sensitive_op``: ops that are unsafe in reduced precision wherever they are (Exp, Log, Softmax,
  TopK, ...), and Sigmoids that are not the gate of a SiLU (``x * sigmoid(x)``, harmless in fp16);
* ``non_image_input``: nodes fed by another graph input but not by the image: computations on the
  ranker's box coordinates (input pixels);
* ``shape_arithmetic``: nodes computing only from tensor shapes (``Shape``/``Size`` and
  constants), such as a feature map's size cast to float to map box coordinates onto it: sizes
  are exact in float32, and a converter that retypes their ``Cast`` breaks the graph;
* ``constant_for_region``: constant-only nodes (no graph input upstream) whose every consumer is in
  the region, so anchor constants are not rounded to fp16 before they reach fp32 math;
* ``fp16_range`` (only when asked): nodes reading a float constant outside the fp16 range.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Unsafe in fp16 / int8 wherever they appear (exponentials, selection, anchor generation).
SENSITIVE_OPS = frozenset(
    {
        "Exp", "Log", "Softmax", "LogSoftmax", "TopK", "ArgMax", "ArgMin", "NonMaxSuppression",
        "RoiAlign", "GridSample", "Range", "CumSum",
    }
)
# Their output does not depend on the input's element type: they follow the precision of the tensor
# they read, so no full-size Cast is placed in front of them.
TYPE_AGNOSTIC_OPS = frozenset({"Shape", "Size"})
FP16_MAX = 65504.0

REASON_TAIL = "after_last_compute"
REASON_SENSITIVE = "sensitive_op"
REASON_NON_IMAGE = "non_image_input"
REASON_CONSTANT = "constant_for_region"
REASON_FP16_RANGE = "fp16_range"
REASON_SHAPE = "shape_arithmetic"


@dataclass(frozen=True)
class Fp32Region:
    """Node names to keep in float32, each with the first reason that selected it."""

    reasons: dict[str, str] = field(default_factory=dict)
    # Tensors produced outside the region and read inside it (e.g. the heads' logits and deltas).
    entry_tensors: frozenset[str] = frozenset()

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self.reasons)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.reasons.values():
            out[r] = out.get(r, 0) + 1
        return out


def ensure_node_names(model: onnx.ModelProto) -> int:
    """Give every unnamed (or duplicate-named) top-level node a unique name; returns how many changed.

    Both converters address nodes by name (block lists, ``nodes_to_exclude``).
    """
    seen: set[str] = set()
    changed = 0
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_rfd{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            node.name = name
            changed += 1
        seen.add(node.name)
    return changed


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            if t:
                out.setdefault(t, []).append(i)
    return out


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {t: i for i, node in enumerate(graph.node) for t in node.output if t}


def _reachable_from(graph: onnx.GraphProto, tensors: list[str], consumers: dict[str, list[int]]) -> set[int]:
    seen: set[int] = set()
    queue = deque(i for t in tensors for i in consumers.get(t, []))
    while queue:
        i = queue.popleft()
        if i in seen:
            continue
        seen.add(i)
        for t in graph.node[i].output:
            queue.extend(consumers.get(t, []))
    return seen


def _topological_order(graph: onnx.GraphProto) -> list[int]:
    """Node indices in dependency order (ONNX requires it, but be tolerant of unsorted files)."""
    producers = _producers(graph)
    indeg = [0] * len(graph.node)
    deps: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        ups = {producers[t] for t in node.input if t in producers}
        indeg[i] = len(ups)
        for u in ups:
            deps.setdefault(u, []).append(i)
    queue = deque(i for i, d in enumerate(indeg) if d == 0)
    order = []
    while queue:
        i = queue.popleft()
        order.append(i)
        for j in deps.get(i, []):
            indeg[j] -= 1
            if indeg[j] == 0:
                queue.append(j)
    if len(order) != len(graph.node):
        raise ValueError("the graph has a cycle")
    return order


def nodes_after_last_compute(graph: onnx.GraphProto) -> set[int]:
    """Indices of nodes from which no compute op (Conv/Gemm/MatMul) is reachable downstream."""
    consumers = _consumers(graph)
    feeds_compute = [False] * len(graph.node)
    for i in reversed(_topological_order(graph)):
        for t in graph.node[i].output:
            for c in consumers.get(t, []):
                if graph.node[c].op_type in COMPUTE_OPS or feeds_compute[c]:
                    feeds_compute[i] = True
                    break
            if feeds_compute[i]:
                break
    return {i for i, n in enumerate(graph.node) if not feeds_compute[i] and n.op_type not in COMPUTE_OPS}


def shape_arithmetic_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of nodes whose every input is a shape (``Shape``/``Size`` output), a value computed
    only from shapes, or a constant, with at least one shape-derived input."""
    constants = {i.name for i in graph.initializer}  # Constant nodes' outputs join in topological order
    derived: set[str] = set()
    out: set[int] = set()
    for i in _topological_order(graph):
        node = graph.node[i]
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        if node.op_type in TYPE_AGNOSTIC_OPS:
            derived.update(node.output)
            continue
        ins = [t for t in node.input if t]
        if ins and any(t in derived for t in ins) and all(t in derived or t in constants for t in ins):
            derived.update(node.output)
            out.add(i)
    return out


def is_silu_gate(graph: onnx.GraphProto, index: int, consumers: dict[str, list[int]]) -> bool:
    """A Sigmoid whose every consumer is Mul(x, sigmoid(x)): an activation inside the network."""
    node = graph.node[index]
    if node.op_type != "Sigmoid":
        return False
    users = consumers.get(node.output[0], [])
    return bool(users) and all(
        graph.node[u].op_type == "Mul" and node.input[0] in graph.node[u].input for u in users
    )


def _float_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Float initializers and Constant-node values, by tensor name."""
    out = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            out[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def out_of_fp16_range(values: np.ndarray) -> bool:
    finite = np.abs(values[np.isfinite(values)])
    return bool(finite.size) and float(finite.max()) > FP16_MAX


def find_fp32_region(
    model: onnx.ModelProto,
    *,
    image_input: str | None = None,
    sensitive_ops: frozenset[str] | set[str] = SENSITIVE_OPS,
    check_fp16_range: bool = False,
    extra_nodes: set[str] | frozenset[str] = frozenset(),
) -> Fp32Region:
    """The nodes of ``model``'s main graph that must stay in float32 (see the module docstring).

    ``image_input`` defaults to the first graph input (``image`` in rfdeploy exports).
    Node names must be unique and non-empty (call ``ensure_node_names`` first).
    """
    graph = model.graph
    names = [n.name for n in graph.node]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError("node names must be unique and non-empty; call ensure_node_names first")
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializer_names]
    if image_input is None and inputs:
        image_input = inputs[0]
    consumers = _consumers(graph)

    reasons: dict[str, str] = {}
    for i in sorted(nodes_after_last_compute(graph)):
        reasons.setdefault(names[i], REASON_TAIL)
    for i, node in enumerate(graph.node):
        if node.op_type in sensitive_ops:
            reasons.setdefault(names[i], REASON_SENSITIVE)
        elif node.op_type == "Sigmoid" and not is_silu_gate(graph, i, consumers):
            reasons.setdefault(names[i], REASON_SENSITIVE)
    for i in sorted(shape_arithmetic_nodes(graph)):
        reasons.setdefault(names[i], REASON_SHAPE)
    from_image = _reachable_from(graph, [image_input] if image_input else [], consumers)
    from_others = _reachable_from(graph, [t for t in inputs if t != image_input], consumers)
    for i in sorted(from_others - from_image):
        reasons.setdefault(names[i], REASON_NON_IMAGE)
    if check_fp16_range:
        consts = _float_constants(graph)
        for i, node in enumerate(graph.node):
            if any(t in consts and out_of_fp16_range(consts[t]) for t in node.input):
                reasons.setdefault(names[i], REASON_FP16_RANGE)
    unknown = set(extra_nodes) - set(names)
    if unknown:
        raise ValueError(f"nodes not in the graph: {sorted(unknown)[:5]}")
    for n in extra_nodes:
        reasons.setdefault(n, "requested")
    # Constant-only nodes follow their consumers (reverse order: chains of constants resolve in one pass).
    fed_by_input = from_image | from_others
    for i in reversed(_topological_order(graph)):
        if i in fed_by_input or names[i] in reasons:
            continue
        users = [c for t in graph.node[i].output for c in consumers.get(t, [])]
        if users and all(names[c] in reasons for c in users):
            reasons[names[i]] = REASON_CONSTANT

    producers = _producers(graph)
    for i, node in enumerate(graph.node):
        if node.op_type in TYPE_AGNOSTIC_OPS and names[i] not in extra_nodes:
            src = producers.get(node.input[0])
            if src is not None and names[src] not in reasons:
                reasons.pop(names[i], None)
            elif src is None:
                reasons.setdefault(names[i], REASON_TAIL)  # graph input: read the fp32 tensor itself

    region = set(reasons)
    entry = set()
    for node in graph.node:
        if node.name in region:
            for t in node.input:
                if t in producers and graph.node[producers[t]].name not in region:
                    entry.add(t)
    return Fp32Region(reasons=reasons, entry_tensors=frozenset(entry))


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers that no graph output depends on (after rewiring)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(list(graph.node)):
        if any(t in needed for t in n.output):
            keep.append(n)
            needed.update(t for t in n.input if t)
    keep.reverse()
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
        used = {t for n in graph.node for t in n.input}
        kept_inits = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
