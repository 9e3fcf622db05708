import torch

from rfdeploy.models import build, ranker_config
from rfdeploy.models.crface import CRFace


def _boxes(n, valid):
    b = torch.rand(2, n, 5)
    b[..., 4] = torch.sort(torch.rand(2, n), dim=1, descending=True).values
    b[:, valid:] = 0
    return b


def test_zero_initialised_head_returns_input_scores(tiny_rank_cfg):
    m = build(tiny_rank_cfg).eval()
    boxes = _boxes(tiny_rank_cfg.num_boxes, 40)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 96, 128), boxes)
    assert out.shape == (2, tiny_rank_cfg.num_boxes)
    assert torch.equal(out, boxes[..., 4])


def test_output_is_residual_and_clipped(tiny_rank_cfg):
    m = build(tiny_rank_cfg).eval()
    for fc in m.conf_fc:
        torch.nn.init.constant_(fc.bias, 0.3)
    boxes = _boxes(tiny_rank_cfg.num_boxes, 40)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 96, 128), boxes)
    expected = (boxes[..., 4] + 0.3).clamp(0, 1)
    expected[:, 40:] = 0  # padded rows stay zero
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.max() <= 1.0 and out.min() >= 0.0


def test_bpn_matches_paper_structure():
    cfg = ranker_config("crface_large", num_boxes=16)
    m = CRFace(cfg)
    assert len(m.bpn.convs) == 9
    assert all(c.kernel_size == (3, 5) and c.padding == (1, 2) and c.out_channels == 64 for c in m.bpn.convs)
    assert len(m.lateral) == 3 and m.conf_fc[0].in_features == 256 and m.conf_fc[0].out_features == 16
    small = CRFace(ranker_config("crface_small", num_boxes=16))
    assert small.conf_fc[0].in_features == 64


def test_ranker_learns_to_reorder(tiny_rank_cfg):
    """A few steps of the ranking loss move the refined order towards the oracle order."""
    from rfdeploy.models.losses import ranking_loss

    torch.manual_seed(0)
    m = build(tiny_rank_cfg).train()
    n = tiny_rank_cfg.num_boxes
    boxes = _boxes(n, n)
    oracle = torch.rand(2, n)
    valid = torch.ones(2, n, dtype=torch.bool)
    img = torch.randn(2, 3, 32, 32)
    # only the ranker's own layers train here; the backbone's part is covered elsewhere
    params = [p for n, p in m.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.Adam(params, 1e-2)
    first = None
    for _ in range(15):
        loss = ranking_loss(m(img, boxes), oracle, valid)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first
