import pytest

from rfdeploy.models.config import detector_config, ranker_config


@pytest.fixture
def tiny_det_cfg():
    # small widths keep CPU tests fast; the architecture is the full RefineFace
    return detector_config("refineface_mbv2", fpn_channels=32, head_channels=32, candidates=300)


@pytest.fixture
def tiny_rank_cfg():
    return ranker_config("crface_small", fpn_channels=16, conf_channels=16, bpn_channels=8, num_boxes=64)
