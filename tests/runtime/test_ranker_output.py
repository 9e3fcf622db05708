"""The ranker's refined scores are what the pipeline reports (a pipeline that ignored them must fail).

A zero-initialised ranker returns its input scores, so a test with one cannot tell a pipeline that
uses the ranker from one that drops its output. Here the ranker adds a known residual per row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfdeploy.core.examples import example_image
from rfdeploy.core.image_io import load_image
from rfdeploy.models import build, detector_config, ranker_config
from rfdeploy.models.checkpoint import save_checkpoint
from rfdeploy.runtime.pipeline import FacePipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranked")
    torch.manual_seed(0)
    det_cfg = detector_config("refineface_mbv2", fpn_channels=16, head_channels=16, candidates=200)
    det = build(det_cfg).eval()
    with torch.no_grad():  # confident enough that candidates pass the pipeline's thresholds
        det.cls_head.pred.bias.fill_(-1.0)
    save_checkpoint(det, d / "det.safetensors")
    rk_cfg = ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64)
    rk = build(rk_cfg).eval()
    # residual = bias (weights stay zero): row i gains -0.004 * (i + 1), so the ranker reverses the
    # detector's order among rows whose scores are within the step, and lowers every score
    with torch.no_grad():
        for fc in rk.conf_fc:
            fc.bias.copy_(-0.004 * (1 + torch.arange(rk_cfg.num_boxes, dtype=torch.float32)))
    save_checkpoint(rk, d / "rk.safetensors")
    return d / "det.safetensors", d / "rk.safetensors"


def test_refined_scores_reach_the_output(models):
    det, rk = models
    rgb = load_image(example_image()).rgb
    plain = FacePipeline.create(detector=det, use_ranker=False, score_thr=0.0, backend="torch").detect(rgb)
    ranked = FacePipeline.create(detector=det, ranker=rk, score_thr=0.0, backend="torch").detect(rgb)
    assert len(plain.scores) > 3 and len(ranked.scores) > 3
    assert ranked.detector_scores is not None
    # every reported score is its own detector score plus that row's residual, and differs from it
    assert np.all(ranked.scores < ranked.detector_scores)
    assert not np.allclose(ranked.scores, ranked.detector_scores)
    # detector scores in the ranked output are the plain pipeline's scores for the same boxes
    for b, s in zip(ranked.boxes[:5], ranked.detector_scores[:5]):
        i = int(np.argmin(np.abs(plain.boxes - b).sum(1)))
        assert np.allclose(plain.boxes[i], b, atol=1e-3) and s == pytest.approx(plain.scores[i], abs=1e-5)
    # the output is ordered by the refined score, not the detector's
    assert np.all(np.diff(ranked.scores) <= 1e-6)
