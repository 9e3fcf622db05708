"""The real RefineFace detector and CRFace ranker at small widths, exported once per test process.

Same graph structure as the bundled defaults (MobileNetV2, FPN, FSM/RFE heads, STC/STR decode,
TopK; CRFace's BPN, FPN joins, residual and Clip), narrow so export and conversion stay fast.
The detector's classification logits are spread (an untrained one scores every anchor at its prior,
all near-ties), and the ranker's zero-initialised output layers get small random weights, so its residual is not
exactly zero and reduced precision in the image branch shows in its scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "rfdeploy" / "assets" / "astronaut.jpg"
GRACE_HOPPER = ROOT / "tests" / "fixtures" / "grace_hopper.jpg"
RANKER_BOXES = 64

_EXPORTED: dict[str, Path] = {}


def small_real_models(tmp_path_factory) -> tuple[Path, Path]:
    """(detector.onnx, ranker.onnx), exported by rfdeploy's exporter on first use."""
    if not _EXPORTED:
        import torch

        from rfdeploy.export.onnx_export import export_model
        from rfdeploy.models import build, detector_config, ranker_config

        d = tmp_path_factory.mktemp("real_models")
        torch.manual_seed(0)
        det = build(detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=300)).eval()
        with torch.no_grad():  # spread the untrained logits so the top candidates are not all near-ties
            det.cls_head.pred.weight.mul_(30.0)
        export_model(det, d / "det.onnx", sample_size=(64, 64))
        rank = build(ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8,
                                   num_boxes=RANKER_BOXES)).eval()
        with torch.no_grad():
            for fc in rank.conf_fc:
                fc.weight.normal_(0.0, 0.05)
        export_model(rank, d / "rank.onnx", sample_size=(64, 64))
        _EXPORTED.update(det=d / "det.onnx", rank=d / "rank.onnx")
    return _EXPORTED["det"], _EXPORTED["rank"]


def photo(path: Path = ASTRONAUT, width: int = 320) -> np.ndarray:
    """An HxWx3 uint8 RGB photo scaled to ``width`` (keeps tests quick on a small input)."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    return np.asarray(im.resize((width, round(h * width / w)), Image.BILINEAR))
