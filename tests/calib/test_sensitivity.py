"""Per-layer INT8 sensitivity: the switch model is faithful, the ranking finds a planted weak layer,
the float selection meets its error goal, and the CLI writes the analysis beside the model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rfdeploy.calib import calibrate, collect
from rfdeploy.calib.calibrate import compute_ranges, prepare, quantize_model, select_images
from rfdeploy.calib.sensitivity import (
    SensitivityReport,
    Simulator,
    analyse,
    build_switch_model,
    choose_float_units,
    sensitivity_path,
)
from tests.precision_fixtures import export_toy_detector, write_images


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("sens")
    imgs = d / "images"
    write_images(imgs, 4)
    det = export_toy_detector(d / "det.onnx", topk=False)
    ctx = prepare(det, calib_size=128)
    sources, _ = select_images(imgs, 4, False)
    ranges = compute_ranges(ctx, sources).ranges
    feeds = list(ctx.batches(sources[:2], 1))
    return {"dir": d, "images": imgs, "det": det, "ctx": ctx, "sources": sources, "ranges": ranges, "feeds": feeds}


def _run_entries(model: onnx.ModelProto, names: list[str], feed: dict) -> list[np.ndarray]:
    m = collect.augmented_model(model, names)
    so = ort.SessionOptions()
    # Q/DQ as written (float arithmetic), not fused into integer kernels that round differently
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def test_switch_model_is_the_fp32_model_off_and_the_qdq_model_on(toy):
    ctx = toy["ctx"]
    sm = build_switch_model(ctx, toy["ranges"])
    assert len(sm.units) == 8  # 4 stem/down convs, the shared head conv, cls, stc, box (one unit per weight)
    assert sum(len(v) for v in sm.units.values()) == 12  # 12 quantized Convs (the head ones per level)
    sim = Simulator(sm, toy["feeds"][:1])
    feed = toy["feeds"][0]
    fp32 = _run_entries(ctx.model, sm.outputs, feed)
    for a, b in zip(sim.reference[0], fp32):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    qdq, _ = quantize_model(ctx, toy["ranges"], quant_format="QDQ")
    want = _run_entries(qdq, sm.outputs, feed)
    got = sim._run(feed, set(sm.units))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert sim.nmse(set()) == 0.0 and sim.nmse(set(sm.units)) > 0


@pytest.mark.parametrize("mode", ["one_at_a_time", "leave_one_out"])
def test_a_planted_weak_layer_ranks_first_and_is_kept_float(toy, mode):
    ctx = toy["ctx"]
    ranges = dict(toy["ranges"])
    conv = [n for n in ctx.model.graph.node if n.op_type == "Conv"][1]  # the stem's second conv
    lo, hi = ranges[conv.input[0]]
    ranges[conv.input[0]] = (lo * 300, hi * 300)  # 300x coarser steps on its input
    rep, sim = analyse(ctx, ranges, toy["sources"][:2], method="max", mode=mode)
    assert rep.ranking[0].nodes == [conv.name] and rep.ranking[0].unit == conv.input[1]
    assert rep.ranking[0].score > 3 * rep.ranking[1].score
    goal = rep.nmse_all_quantized / 3
    kept = choose_float_units(rep, sim, max_nmse=goal)
    assert conv.name in kept
    curve = dict(rep.curve)
    k = len(rep.kept_float_units)
    assert curve[k] <= goal and all(e > goal for kk, e in curve.items() if kk < k)
    assert sim.nmse(set(sim.sm.units) - set(rep.kept_float_units)) == pytest.approx(
        dict(rep.curve)[len(rep.kept_float_units)])


def test_count_selection_and_report_round_trip(toy, tmp_path):
    rep, sim = analyse(toy["ctx"], toy["ranges"], toy["sources"][:1], method="max")
    nodes = choose_float_units(rep, sim, count=2)
    assert rep.kept_float_units == [u.unit for u in rep.ranking[:2]]
    assert nodes == sorted(n for u in rep.ranking[:2] for n in u.nodes)
    assert [s.score for s in rep.ranking] == sorted((s.score for s in rep.ranking), reverse=True)
    path = rep.write(tmp_path / "a.sensitivity.json")
    back = SensitivityReport.from_dict(json.loads(path.read_text()))
    assert back == rep
    assert sensitivity_path(tmp_path / "det.int8.onnx") == tmp_path / "det.int8.sensitivity.json"


def test_calibrate_with_analysis_keeps_the_chosen_nodes_float(toy, tmp_path):
    dst = tmp_path / "det.int8.onnx"
    r = calibrate(toy["det"], toy["images"], dst, num=4, calib_size=128, analyse=True, analyse_num=2,
                  analyse_size=96, keep_float_top=1)
    assert r.sensitivity_file == str(tmp_path / "det.int8.sensitivity.json")
    data = json.loads((tmp_path / "det.int8.sensitivity.json").read_text())
    assert data["input_shape"] == [1, 3, 96, 96] and len(data["images"]) == 2
    assert r.kept_float == data["kept_float_nodes"] and len(r.kept_float) >= 1
    m = onnx.load(str(dst))
    producer = {t: n for n in m.graph.node for t in n.output}
    for n in m.graph.node:
        if n.name in r.kept_float:
            assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear" for t in n.input)


def test_cli_analyse_prints_and_writes(toy, tmp_path):
    from click.testing import CliRunner

    from rfdeploy.cli import main

    out = tmp_path / "cli.int8.onnx"
    res = CliRunner().invoke(main, ["calibrate", str(toy["det"]), "--images", str(toy["images"]), "-o", str(out),
                                    "--num", "4", "--calib-size", "128", "--analyse", "--analyse-num", "1",
                                    "--analyse-size", "96", "--max-nmse", "1e-9", "--target", "cpu"])
    assert res.exit_code == 0, res.output
    assert "sensitivity (one_at_a_time" in res.output and "units kept float -> nmse" in res.output
    data = json.loads((tmp_path / "cli.int8.sensitivity.json").read_text())
    assert data["target"] == "cpu" and data["max_nmse"] == 1e-9
    # an unreachable goal leaves every unit float, and says so in the curve
    assert len(data["kept_float_units"]) == len(data["ranking"])
