import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rfdeploy.core.boxes import box_iou, merge_and_nms, merge_candidates, nms


@st.composite
def detections(draw, max_n=60):
    n = draw(st.integers(0, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Clustered boxes so suppression actually happens.
    centers = rng.uniform(0, 200, size=(max(1, n // 4), 2))
    c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 5, (n, 2))
    wh = rng.uniform(4, 60, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / max(n, 1) + 0.001  # distinct: no ties
    iou = draw(st.sampled_from([0.3, 0.4, 0.5, 0.7]))
    return boxes, scores, iou, rng.permutation(n)


@given(detections())
@settings(max_examples=150, deadline=None)
def test_nms_is_independent_of_input_order(d):
    boxes, scores, iou, perm = d
    keep = nms(boxes, scores, iou)
    keep_p = nms(boxes[perm], scores[perm], iou)
    assert sorted(keep.tolist()) == sorted(perm[keep_p].tolist())
    # Highest score first.
    assert np.all(np.diff(scores[keep]) <= 0)


@given(detections())
@settings(max_examples=150, deadline=None)
def test_nms_is_idempotent_and_leaves_no_overlaps(d):
    boxes, scores, iou, _ = d
    keep = nms(boxes, scores, iou)
    again = nms(boxes[keep], scores[keep], iou)
    assert again.tolist() == list(range(len(keep)))
    if len(keep) > 1:
        m = box_iou(boxes[keep], boxes[keep])
        np.fill_diagonal(m, 0)
        assert m.max() <= iou + 1e-6
    # Every suppressed box overlaps a kept box with a higher score.
    dropped = np.setdiff1d(np.arange(len(boxes)), keep)
    if len(dropped):
        m = box_iou(boxes[dropped], boxes[keep])
        higher = scores[keep][None, :] > scores[dropped][:, None]
        assert np.all(((m > iou) & higher).any(axis=1))


def test_nms_known_case_and_max_det():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.1], np.float32)
    keep = nms(boxes, scores, iou=0.5)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.int64
    assert keep.tolist() == [1, 2]
    assert nms(boxes, scores, iou=0.5, max_det=1).tolist() == [1]
    assert nms(boxes, scores, iou=1.0).tolist() == [1, 0, 2, 3]


def test_nms_torch_in_torch_out_and_empty():
    b = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]])
    s = torch.tensor([0.5, 0.6])
    keep = nms(b, s, 0.5)
    assert isinstance(keep, torch.Tensor) and keep.tolist() == [1]
    empty = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


def test_nms_validates():
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms(np.zeros((2, 4)), np.zeros(1), 0.5)
    with pytest.raises(ValueError, match="iou"):
        nms(np.zeros((2, 4)), np.zeros(2), 1.5)


def test_box_iou_values_and_kinds():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-6)
    out = box_iou(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3)


def test_merge_candidates_and_merge_and_nms():
    p1 = (np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([[1, 2]]))
    p2 = (np.array([[1, 1, 10, 10], [50, 50, 60, 60]], np.float32), np.array([0.5, 0.8], np.float32),
          np.array([[3, 4], [5, 6]]))
    b, s, extra = merge_candidates([p1, p2])
    assert b.shape == (3, 4) and s.tolist() == pytest.approx([0.9, 0.5, 0.8]) and extra.shape == (3, 2)
    kb, ks, ke = merge_and_nms([p1, p2], iou=0.5)
    assert ks.tolist() == pytest.approx([0.9, 0.8]) and ke.tolist() == [[1, 2], [5, 6]]
    eb, es = merge_candidates([])
    assert eb.shape == (0, 4) and es.shape == (0,)
    tb, ts = merge_candidates([(torch.zeros(2, 4), torch.zeros(2)), (torch.ones(1, 4), torch.ones(1))])
    assert isinstance(tb, torch.Tensor) and tb.shape == (3, 4)
    with pytest.raises(ValueError, match="same number of arrays"):
        merge_candidates([p1, p2[:2]])
    with pytest.raises(ValueError, match="part 0: 1 boxes but 2 scores"):
        merge_candidates([(p1[0], np.zeros(2))])


# -- the numpy NMS and IoU against torchvision's (the torch path and the host path must agree) ------

@st.composite
def torchvision_cases(draw):
    """Clustered boxes, some of exact integer geometry (IoUs land exactly on thresholds such as
    1/3), some empty (zero area: torchvision's 0/0 IoU never suppresses), distinct scores."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, 200))
    k = max(1, n // 5)
    c = rng.uniform(0, 100, (k, 2))[rng.integers(0, k, n)] + rng.normal(0, 3, (n, 2))
    wh = rng.uniform(0, 30, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    if draw(st.booleans()):
        boxes = np.round(boxes)
    scores = rng.permutation(n).astype(np.float32) / max(n, 1) + rng.uniform(0, 1e-3, n).astype(np.float32)
    iou = draw(st.sampled_from([0.3, 1 / 3, 0.4, 0.5, 0.7, 1.0]))
    max_det = draw(st.sampled_from([None, 1, 5, 750]))
    return boxes.astype(np.float32), scores, iou, max_det


@given(torchvision_cases())
@settings(max_examples=200, deadline=None)
def test_numpy_nms_keeps_what_torchvision_keeps(case):
    from torchvision.ops import nms as tv_nms

    boxes, scores, iou, max_det = case
    got = nms(boxes, scores, iou, max_det=max_det)
    want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    assert got.dtype == np.int64
    assert got.tolist() == want[:max_det].tolist()


def test_numpy_nms_on_an_iou_exactly_at_the_threshold_follows_torchvision():
    """IoU 1/3 in float32 is 0.33333334 > the double 1/3, so torchvision suppresses; a float32
    comparison would not."""
    from torchvision.ops import nms as tv_nms

    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), 1 / 3).tolist()
    assert want == [0]
    assert nms(boxes, scores, 1 / 3).tolist() == want


def test_numpy_nms_breaks_score_ties_by_index():
    boxes = np.array([[50, 50, 60, 60], [0, 0, 10, 10], [1, 0, 10, 10]], np.float32)
    assert nms(boxes, np.array([0.5, 0.5, 0.5], np.float32), 0.5).tolist() == [0, 1]
    assert nms(boxes, np.array([0.4, 0.5, 0.5], np.float32), 0.5).tolist() == [1, 0]


@given(torchvision_cases())
@settings(max_examples=100, deadline=None)
def test_numpy_box_iou_equals_torchvision(case):
    from torchvision.ops import box_iou as tv_box_iou

    boxes, _, _, _ = case
    other = boxes[::-1].copy()
    got = box_iou(boxes, other)
    want = tv_box_iou(torch.from_numpy(boxes), torch.from_numpy(other)).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN (empty boxes) in the same places, all else equal
