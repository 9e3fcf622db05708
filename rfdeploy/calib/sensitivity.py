"""Which layers INT8 cannot carry: per-unit sensitivity, measured on the calibration images.

One simulation model serves every measurement. It is the target's quantized model in Q/DQ form
(rfdeploy.calib.calibrate.quantize_model), in which every input a quantized node reads through a
DequantizeLinear is replaced by ``Where(switch, dequantized, float original)``: the activation
before its QuantizeLinear, or the float weight. One boolean graph input per *unit* turns the
quantization of that unit's nodes on or off, so each configuration is one onnxruntime run of one
session, with no re-quantization. With every switch off the model computes the fp32 model.

A unit is the set of quantized nodes that read the same weight initializer (RefineFace's heads
apply one Conv to every pyramid level: one weight, one unit), or a single node without weights.
Unquantized readers of a quantized activation (a Relu after a Conv's output Q/DQ) follow the
unit of the node that produced it, as onnxruntime drops that Q/DQ when the producer stays float.

The measured output is what enters the float region (the heads' logits and box deltas, before
decode and TopK, so that candidate order plays no part): for each such tensor the normalised
squared error ``sum((q - f)^2) / sum(f^2)`` against the fp32 run on the same image, averaged over
tensors and images (``nmse``; 0.01 is an SQNR of 20 dB).

* ``one_at_a_time``: only the unit is quantized; its nmse is the damage it does alone.
* ``leave_one_out``: everything but the unit is quantized; its score is how much nmse drops.

``choose_float_units`` then leaves the most sensitive units in float, in ranking order, until the
nmse of the whole model (measured, not summed) is at most ``max_nmse``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rfdeploy.calib.calibrate import CalibContext, quantize_model
from rfdeploy.calib.images import CalibSource
from rfdeploy.core.errors import BuildError
from rfdeploy.core.fsutil import atomic_write_bytes, sha256_file
from rfdeploy.export.graph_regions import remove_dead_nodes

MODES = ("one_at_a_time", "leave_one_out")
SWITCH_PREFIX = "rfdeploy_quant_unit_"
REPORT_FORMAT = 1


@dataclass
class UnitScore:
    unit: str  # the shared weight's name, or the node's name
    nodes: list[str]
    op_type: str
    score: float  # one_at_a_time: nmse with only this unit quantized; leave_one_out: nmse drop


@dataclass
class SensitivityReport:
    model: str
    model_sha256: str
    target: str
    method: str
    mode: str
    images: list[str]
    input_shape: list[int]
    nmse_all_quantized: float
    ranking: list[UnitScore]
    seconds: float
    # (units kept float, nmse measured) along the greedy selection
    curve: list[tuple[int, float]] = field(default_factory=list)
    kept_float_units: list[str] = field(default_factory=list)
    kept_float_nodes: list[str] = field(default_factory=list)
    max_nmse: float | None = None

    def to_dict(self) -> dict:
        return {"format": REPORT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityReport":
        d = {k: v for k, v in d.items() if k != "format"}
        d["ranking"] = [UnitScore(**u) for u in d["ranking"]]
        d["curve"] = [tuple(c) for c in d.get("curve", [])]
        return cls(**d)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())
        return path

    def lines(self, top: int = 15) -> list[str]:
        head = "quantized alone" if self.mode == "one_at_a_time" else "nmse drop if float"
        out = [f"sensitivity ({self.mode}, {len(self.images)} images {self.input_shape[2]}x{self.input_shape[3]}, "
               f"{self.target} target): nmse with everything quantized {self.nmse_all_quantized:.3g}",
               f"  {'rank':>4} {head:>16}  layer"]
        for i, u in enumerate(self.ranking[:top], 1):
            where = u.nodes[0] if u.nodes else u.unit  # weight names of folded BN are opaque: show a node
            more = f" and {len(u.nodes) - 1} more reading its weight" if len(u.nodes) > 1 else ""
            out.append(f"  {i:>4} {u.score:>16.3g}  {where} ({u.op_type}{more})")
        if self.curve:
            out.append("  units kept float -> nmse: " + ", ".join(f"{k}: {e:.3g}" for k, e in self.curve))
        return out


def sensitivity_path(dst_onnx: str | Path) -> Path:
    """Where the analysis of ``dst_onnx`` is written: beside it, ``<stem>.sensitivity.json``."""
    p = Path(dst_onnx)
    return p.with_name(p.stem + ".sensitivity.json")


# ---------------------------------------------------------------- the switch model


@dataclass
class SwitchModel:
    model: onnx.ModelProto
    units: dict[str, list[str]]  # unit -> node names
    unit_op: dict[str, str]
    switch: dict[str, str]  # unit -> graph input name
    outputs: list[str]


def _float_inputs(ctx: CalibContext) -> dict[str, list[str]]:
    return {n.name: list(n.input) for n in ctx.model.graph.node}


def build_switch_model(ctx: CalibContext, ranges: dict[str, tuple[float, float]]) -> SwitchModel:
    qmodel, _ = quantize_model(ctx, ranges, quant_format="QDQ")
    graph = qmodel.graph
    producer = {t: n for n in graph.node for t in n.output}
    float_init = {i.name: i for i in ctx.model.graph.initializer}
    have = {i.name for i in graph.initializer}
    orig_inputs = _float_inputs(ctx)
    excluded = ctx.excluded

    units: dict[str, list[str]] = {}
    unit_op: dict[str, str] = {}
    node_unit: dict[str, str] = {}

    def reads_dq(n) -> bool:
        return any(t in producer and producer[t].op_type == "DequantizeLinear" for t in n.input)

    for n in graph.node:
        if n.op_type not in ctx.op_types or n.name in excluded or n.name not in orig_inputs or not reads_dq(n):
            continue
        weights = [t for t in orig_inputs[n.name][1:2] if t in float_init]
        unit = weights[0] if weights else n.name
        units.setdefault(unit, []).append(n.name)
        unit_op.setdefault(unit, n.op_type)
        node_unit[n.name] = unit
    if not units:
        raise BuildError(f"{ctx.src}: no quantized node to analyse")

    # Other readers of a quantized activation (a Relu, Add or Shape after a Conv's output Q/DQ) follow
    # the unit of the node that produced the activation, else of a quantized node reading it too.
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n.name)

    def activation_unit(dq_out: str, q_in: str) -> str:
        src = producer.get(q_in)
        if src is not None and src.name in node_unit:
            return node_unit[src.name]
        for r in readers.get(dq_out, []):
            if r in node_unit:
                return node_unit[r]
        unit = f"tensor:{q_in}"
        units.setdefault(unit, [])
        unit_op.setdefault(unit, "activation")
        return unit

    new_nodes = []
    for n in list(graph.node):
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, t in enumerate(n.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                src = q.input[0]
                u = node_unit.get(n.name) or activation_unit(t, src)
            else:  # a stored weight or bias: read the float original
                u = node_unit.get(n.name)
                src = orig_inputs.get(n.name, [])[i] if i < len(orig_inputs.get(n.name, [])) else ""
                if u is None or src not in float_init:
                    continue
                if src not in have:
                    graph.initializer.append(float_init[src])
                    have.add(src)
            out = f"{n.name}_rfd_in{i}"
            new_nodes.append(onnx.helper.make_node("Where", [f"@{u}", t, src], [out], name=f"{out}_where"))
            n.input[i] = out
    switch = {u: f"{SWITCH_PREFIX}{k}" for k, u in enumerate(units)}
    for w in new_nodes:
        w.input[0] = switch[w.input[0][1:]]
    graph.node.extend(new_nodes)
    for u, name in switch.items():
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, []))
    inferred = onnx.shape_inference.infer_shapes(ctx.model)
    float_tensors = {v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    outputs = sorted(t for t in ctx.region.entry_tensors if t in float_tensors)  # not Shape outputs
    if not outputs:
        raise BuildError(f"{ctx.src}: no float tensor enters the float region; nothing to measure")
    del graph.output[:]
    for t in outputs:
        graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    _topological_sort(graph)  # first: the new Where nodes sit at the end, before their consumers
    remove_dead_nodes(qmodel)
    return SwitchModel(qmodel, units, unit_op, switch, outputs)


def _topological_sort(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(t in known for t in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise BuildError("the sensitivity model has a cycle or a dangling input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


class Simulator:
    """Runs the switch model on fixed feeds; ``nmse(on)`` for a set of quantized units."""

    def __init__(self, sm: SwitchModel, feeds: list[dict[str, np.ndarray]], threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.sess = ort.InferenceSession(sm.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types
            raise BuildError(f"the sensitivity model does not load: {type(e).__name__}: {e}") from e
        self.sm, self.feeds = sm, feeds
        self.reference = [self._run(x, set()) for x in feeds]

    def _run(self, feed, on: set[str]) -> list[np.ndarray]:
        sw = {name: np.array(u in on) for u, name in self.sm.switch.items()}
        return self.sess.run(None, {**feed, **sw})

    def nmse(self, on: set[str]) -> float:
        errs = []
        for feed, ref in zip(self.feeds, self.reference):
            got = self._run(feed, on)
            for r, g in zip(ref, got):
                power = float(np.sum(r.astype(np.float64) ** 2))
                err = float(np.sum((g.astype(np.float64) - r) ** 2))
                errs.append(err / power if power > 0 else (0.0 if err == 0 else 1.0))
        return float(np.mean(errs))


def analyse(ctx: CalibContext, ranges: dict[str, tuple[float, float]], sources: list[CalibSource], *,
            method: str, mode: str = "one_at_a_time", size: int | None = None,
            progress=None) -> tuple[SensitivityReport, Simulator]:
    """Rank the units of ``ctx``'s model by sensitivity on ``sources`` (see the module docstring)."""

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t0 = time.perf_counter()
    sm = build_switch_model(ctx, ranges)
    feeds = list(ctx.batches(sources, 1, size))
    sim = Simulator(sm, feeds)
    all_units = set(sm.units)
    everything = sim.nmse(all_units)
    scores = []
    for k, u in enumerate(sm.units):
        if mode == "one_at_a_time":
            s = sim.nmse({u})
        else:
            s = everything - sim.nmse(all_units - {u})
        scores.append(UnitScore(unit=u, nodes=sm.units[u], op_type=sm.unit_op[u], score=s))
        if progress:
            progress(k + 1, len(sm.units))
    scores.sort(key=lambda s: -s.score)
    report = SensitivityReport(
        model=str(ctx.src), model_sha256=sha256_file(ctx.src), target=ctx.target.name, method=method, mode=mode,
        images=[s.name for s in sources], input_shape=list(feeds[0][ctx.inputs.image].shape),
        nmse_all_quantized=everything, ranking=scores, seconds=0.0,
    )
    report.seconds = round(time.perf_counter() - t0, 1)
    return report, sim


def choose_float_units(report: SensitivityReport, sim: Simulator, *, max_nmse: float | None = None,
                       count: int | None = None) -> list[str]:
    """Units to leave in float: the top ``count``, or the fewest of the ranking (tried 0, 1, 2, 4, ...)
    whose measured nmse is at most ``max_nmse``. Records the measured curve in ``report``."""
    # a unit without nodes (an activation read only by unquantized ops) cannot be left float by itself
    ranked = [u.unit for u in report.ranking if u.nodes]
    all_units = {u.unit for u in report.ranking}
    if count is not None:
        k = max(0, min(count, len(ranked)))
        report.curve.append((k, sim.nmse(all_units - set(ranked[:k]))))
    elif max_nmse is not None:
        report.max_nmse = max_nmse
        measured: dict[int, float] = {}

        def err(j: int) -> float:
            if j not in measured:
                measured[j] = sim.nmse(all_units - set(ranked[:j])) if j else report.nmse_all_quantized
            return measured[j]

        lo, k = -1, 0  # doubling until the goal is met, then bisection between the last two tries
        while err(k) > max_nmse and k < len(ranked):
            lo, k = k, min(len(ranked), max(1, 2 * k))
        while err(k) <= max_nmse and k - lo > 1:
            mid = (lo + k) // 2
            if err(mid) <= max_nmse:
                k = mid
            else:
                lo = mid
        report.curve.extend(sorted(measured.items()))
    else:
        k = 0
    chosen = ranked[:k]
    by_unit = {u.unit: u.nodes for u in report.ranking}
    report.kept_float_units = chosen
    report.kept_float_nodes = sorted(n for u in chosen for n in by_unit[u])
    return report.kept_float_nodes
