"""The ONNX files shipped beside the bundled checkpoints are exports of exactly those checkpoints
(benchmarks/export_bundled.py re-makes them; this is its --check), so the two cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("export_bundled", ROOT / "benchmarks" / "export_bundled.py")
export_bundled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_bundled)


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fresh_exports")


@pytest.mark.parametrize("role", ["detector", "ranker"])
def test_shipped_onnx_is_a_fresh_export_of_the_shipped_checkpoint(role, fresh_dir):
    checkpoint, shipped = export_bundled.BUNDLED[role]
    assert shipped.is_file() and shipped.parent == checkpoint.parent
    problems = export_bundled.compare_with_fresh_export(checkpoint, shipped, fresh_dir)
    assert problems == [], "\n".join(problems) + "\nre-make them: python benchmarks/export_bundled.py"


def test_the_check_reports_a_stale_onnx(fresh_dir, tmp_path):
    """A shipped file from another checkpoint (other sha256, other weights) is reported."""
    import onnx
    from onnx import numpy_helper

    checkpoint, shipped = export_bundled.BUNDLED["ranker"]
    m = onnx.load(str(shipped))
    for t in m.graph.initializer:  # other weights: every float tensor scaled
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32 and w.size > 1:
            t.CopyFrom(numpy_helper.from_array(w * np.float32(1.5), t.name))
    for p in m.metadata_props:
        if p.key == "rfdeploy.source_sha256":
            p.value = "0" * 64
    stale = tmp_path / "stale.onnx"
    onnx.save(m, str(stale))
    problems = export_bundled.compare_with_fresh_export(checkpoint, stale, fresh_dir)
    assert any("sha256" in p for p in problems), problems
    assert any("outputs differ" in p for p in problems), problems
    assert not any("metadata rfdeploy.source_sha256" in p for p in problems)  # reported once, as such


def test_the_runtime_defaults_are_the_shipped_onnx_files():
    from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_DETECTOR_ONNX, DEFAULT_RANKER, DEFAULT_RANKER_ONNX
    from rfdeploy.runtime.pipeline import bundled_model

    assert bundled_model("detector") == DEFAULT_DETECTOR_ONNX and bundled_model("ranker") == DEFAULT_RANKER_ONNX
    assert bundled_model("detector", "onnxruntime") == DEFAULT_DETECTOR_ONNX
    # the torch backend runs checkpoints
    assert bundled_model("detector", "torch") == DEFAULT_DETECTOR and bundled_model("ranker", "torch") == DEFAULT_RANKER


def test_the_shipped_detector_carries_the_tile_range_its_8k_figures_were_measured_with():
    """docs/benchmarks.md's 8K figures need each pyramid pass to keep faces of 24-192 px; a
    detector bundled without ``--tile-faces`` falls back to 16-362 px and loses about 0.06 AP@0.5
    there (phase 6 shipped that way)."""
    import json

    import onnxruntime as ort

    from rfdeploy.core.metadata import onnx_metadata

    sess = ort.InferenceSession(str(export_bundled.BUNDLED["detector"][1]), providers=["CPUExecutionProvider"])
    cfg = json.loads(onnx_metadata(sess)["rfdeploy.config"])
    assert (cfg["tile_min_face"], cfg["tile_max_face"]) == (24, 192)
