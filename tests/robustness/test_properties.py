"""Property tests for the geometry every result passes through: box coding, NMS merging across
tiles, tile/scale coordinate mapping, letterbox mapping and the ranker's candidate packing.

(NMS order independence and idempotence, tile coverage and the tile round trip are in
tests/runtime/test_nms.py and tests/runtime/test_tiling.py.)"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rfdeploy.core.boxes import merge_and_nms, nms, pack_candidates
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.preprocess import Letterbox, preprocess
from rfdeploy.models.anchors import cxcywh_to_xyxy, decode, encode, xyxy_to_cxcywh
from rfdeploy.runtime.tiling import Tile, to_image_coords, to_tile_coords

FAST = settings(max_examples=120, deadline=None)
MAX_RATIO = 1000.0 / 16  # decode() clamps the size factor here

variances = st.tuples(st.sampled_from([0.1, 0.2, 0.05]), st.sampled_from([0.2, 0.1, 0.5]))


@st.composite
def anchors_and_boxes(draw, max_ratio=MAX_RATIO * 0.99):
    n = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    anchors = np.column_stack([rng.uniform(0, 4000, (n, 2)), rng.uniform(4, 600, (n, 2))])
    # box sizes within the decodable range of their anchor, centres anywhere near it
    ratio = np.exp(rng.uniform(math.log(1 / max_ratio), math.log(max_ratio), (n, 2)))
    wh = anchors[:, 2:] * ratio
    centres = anchors[:, :2] + rng.normal(0, 1, (n, 2)) * anchors[:, 2:] * 3
    boxes = np.column_stack([centres - wh / 2, centres + wh / 2])
    return torch.tensor(anchors, dtype=torch.float64), torch.tensor(boxes, dtype=torch.float64)


@given(anchors_and_boxes(), variances)
@FAST
def test_box_coding_round_trips(ab, var):
    anchors, boxes = ab
    cvar, svar = var
    back = cxcywh_to_xyxy(decode(encode(boxes, anchors, cvar, svar), anchors, cvar, svar))
    scale = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    torch.testing.assert_close(back, boxes, rtol=0, atol=float(1e-9 * (1 + scale.max())))
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


@given(anchors_and_boxes(), variances)
@FAST
def test_box_coding_round_trips_in_float32(ab, var):
    anchors, boxes = ab[0].float(), ab[1].float()
    back = cxcywh_to_xyxy(decode(encode(boxes, anchors, *var), anchors, *var))
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    assert torch.all((back - boxes).abs() <= 1e-3 * (1 + boxes.abs() + size))


@given(anchors_and_boxes(), variances, st.floats(-1e6, 1e6))
@FAST
def test_decode_never_overflows_and_clamps_size(ab, var, wild):
    anchors, _ = ab
    deltas = torch.full((len(anchors), 4), wild, dtype=torch.float32)
    out = decode(deltas, anchors.float(), *var)
    assert torch.isfinite(out).all()
    assert torch.all(out[:, 2:] <= anchors.float()[:, 2:] * MAX_RATIO * (1 + 1e-5))
    assert torch.all(out[:, 2:] >= 0)  # a very negative delta may underflow to an empty box


@given(anchors_and_boxes(), variances)
@FAST
def test_encode_is_finite_for_degenerate_boxes(ab, var):
    anchors, boxes = ab
    flat = boxes.clone()
    flat[:, 2] = flat[:, 0]  # zero width
    assert torch.isfinite(encode(flat, anchors, *var)).all()


@st.composite
def clustered(draw, max_n=50):
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    centres = rng.uniform(0, 300, (max(1, n // 4), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = (rng.permutation(n) + 1).astype(np.float32) / (n + 1)  # distinct
    cuts = sorted(rng.integers(0, n + 1, draw(st.integers(0, 4))).tolist())
    return boxes, scores, cuts, rng.permutation(n)


@given(clustered(), st.sampled_from([0.3, 0.4, 0.5]))
@FAST
def test_merge_and_nms_does_not_depend_on_how_candidates_were_split(d, iou):
    """Tiles and passes hand their candidates over in arbitrary groups: the merged result is the
    NMS of all of them, whatever the grouping and order of the groups."""
    boxes, scores, cuts, perm = d
    b, s = boxes[perm], scores[perm]
    edges = [0, *cuts, len(b)]
    parts = [(b[i:j], s[i:j]) for i, j in itertools.pairwise(edges)]
    mb, ms = merge_and_nms(parts[::-1], iou=iou)
    keep = nms(boxes, scores, iou)
    np.testing.assert_array_equal(ms, scores[keep])
    np.testing.assert_array_equal(mb, boxes[keep])


@given(st.floats(0.05, 2.0), st.data())
@FAST
def test_boxes_move_between_tiles_of_a_pass_by_the_offset_difference(scale, data):
    # a pass of an image of up to 16384 px, scaled by `scale`, cut into 640 px tiles
    side = max(640, int(16384 * scale))
    offset = st.integers(0, side - 640)
    ta, tb = (Tile(x, y, x + 640, y + 640) for x, y in [(data.draw(offset), data.draw(offset)) for _ in range(2)])
    rows = data.draw(st.lists(st.tuples(st.floats(0, 600), st.floats(0, 600), st.floats(1, 40), st.floats(1, 40)),
                              min_size=1, max_size=20))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in rows])
    in_b = to_tile_coords(to_image_coords(boxes, ta, scale), tb, scale)
    shift = np.array([ta.x0 - tb.x0, ta.y0 - tb.y0] * 2, np.float64)
    # image coordinates are float32: up to 16384 px that is 2e-3 px, times the pass scale
    np.testing.assert_allclose(in_b, boxes + shift, rtol=0, atol=1e-2)
    # the image-space size is the tile-space size over the pass scale
    img = to_image_coords(boxes, ta, scale)
    np.testing.assert_allclose(img[:, 2:] - img[:, :2], (boxes[:, 2:] - boxes[:, :2]) / scale, rtol=1e-4, atol=1e-2)


@given(st.integers(1, 3000), st.integers(1, 3000), st.floats(0.01, 8.0), st.data())
@FAST
def test_letterbox_to_image_inverts_the_scaling(w, h, scale, data):
    lb = Letterbox(scale=scale, image_size=(w, h), input_size=(math.ceil(w * scale), math.ceil(h * scale)))
    n = data.draw(st.integers(1, 10))
    xs = np.sort(np.array(data.draw(st.lists(st.floats(0, w), min_size=2 * n, max_size=2 * n))).reshape(n, 2), axis=1)
    ys = np.sort(np.array(data.draw(st.lists(st.floats(0, h), min_size=2 * n, max_size=2 * n))).reshape(n, 2), axis=1)
    boxes = np.column_stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]])
    back = lb.to_image(boxes * scale)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)
    # outside the image: clipped to it
    far = lb.to_image(np.array([[-50, -50, (w + 50) * scale, (h + 50) * scale]]))
    np.testing.assert_array_equal(far, [[0, 0, w, h]])


@given(st.integers(8, 1500), st.integers(8, 1500), st.sampled_from([64, 160, 320, 640]))
@settings(max_examples=25, deadline=None)
def test_preprocess_letterbox_maps_the_resized_frame_to_the_whole_image(w, h, resize_to):
    c = PreprocessContract(resize="long_side", resize_to=resize_to)
    x, lb = preprocess(np.zeros((h, w, 3), np.uint8), c)
    nw, nh = max(1, round(w * lb.scale)), max(1, round(h * lb.scale))
    assert x.shape[3] >= nw and x.shape[2] >= nh and max(nw, nh) == resize_to
    frame = lb.to_image(np.array([[0, 0, nw, nh]], np.float32))[0]
    # rounding the resized size to whole pixels moves the far edge by at most half a pixel there
    np.testing.assert_allclose(frame, [0, 0, w, h], atol=0.5 / lb.scale + 1e-3)


@st.composite
def candidates(draw):
    k = draw(st.integers(0, 80))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    xy = rng.uniform(0, 500, (k, 2))
    boxes = np.column_stack([xy, xy + rng.uniform(1, 100, (k, 2))]).astype(np.float32)
    # ties, zeros (no candidate) and a few exact duplicates of scores
    scores = rng.choice(np.concatenate([[0.0, 0.0, 0.5, 0.5], rng.uniform(0, 1, 20)]), k).astype(np.float32)
    return boxes, scores, draw(st.integers(1, 64)), draw(st.integers(16, 4000)), draw(st.integers(16, 4000))


@given(candidates())
@FAST
def test_pack_candidates_invariants(c):
    boxes, scores, n, w, h = c
    packed, order = pack_candidates(boxes, scores, w, h, n)
    m = len(order)
    assert packed.shape == (n, 5) and packed.dtype == np.float32
    assert m == min(n, int((scores > 0).sum()))
    assert len(set(order.tolist())) == m
    # rows: best score first, the N best positive candidates, ties in input order, zero padding
    assert np.all(np.diff(packed[:m, 4]) <= 0) and np.all(packed[:m, 4] > 0)
    assert not packed[m:].any()
    rest = np.setdiff1d(np.arange(len(scores)), order)
    if m and len(rest):
        assert scores[rest].max() <= packed[m - 1, 4]
    for i in range(m - 1):
        if scores[order[i]] == scores[order[i + 1]]:
            assert order[i] < order[i + 1]
    # each row is its candidate, normalised: x, y, w, h over the image size
    b = boxes[order]
    expect = np.column_stack([b[:, 0] / w, b[:, 1] / h, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h, scores[order]])
    np.testing.assert_allclose(packed[:m], expect, rtol=1e-6)
    assume(m > 0)
    # and back to pixels
    np.testing.assert_allclose(packed[:m, 0] * w, b[:, 0], rtol=1e-5, atol=1e-3)
