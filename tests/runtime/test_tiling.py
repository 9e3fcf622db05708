import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rfdeploy.runtime.tiling import (
    Tile,
    choose_tile_size,
    drop_cut_boxes,
    keep_mask,
    plan_pyramid,
    plan_tiles,
    to_image_coords,
    to_tile_coords,
)

dims = st.integers(1, 30000)


@st.composite
def grid_params(draw, max_dim=30000):
    tile = draw(st.integers(2, 2048))
    overlap = draw(st.integers(0, tile - 1))
    # At most ~100 tiles per axis keeps the examples fast.
    cap = min(max_dim, tile + 100 * (tile - overlap))
    w = draw(st.integers(1, cap))
    h = draw(st.integers(1, cap))
    return w, h, tile, overlap


def _kept_somewhere(box, tiles, scale, image_w, image_h, margin, pass_=None):
    """True when some tile holds ``box`` (image pixels) whole and keep_mask keeps it there."""
    sx, sy = scale
    x1, y1, x2, y2 = box[0, 0] * sx, box[0, 1] * sy, box[0, 2] * sx, box[0, 3] * sy
    for t in tiles:
        # Cheap pre-filter; the real decision is keep_mask on the tile-local box.
        if not (t.x0 - 1e-6 <= x1 and x2 <= t.x1 + 1e-6 and t.y0 - 1e-6 <= y1 and y2 <= t.y1 + 1e-6):
            continue
        local = to_tile_coords(box, t, scale)
        if keep_mask(local, t, image_w, image_h, margin)[0] and (pass_ is None or pass_.responsible(local)[0]):
            return True
    return False


def _axis(tiles, lo, hi):
    return sorted({(getattr(t, lo), getattr(t, hi)) for t in tiles})


@given(grid_params(), st.sampled_from([1, 8, 32]))
@settings(max_examples=300, deadline=None)
def test_tiles_cover_overlap_and_have_one_shape(p, multiple):
    w, h, tile, overlap = p
    tiles = plan_tiles(w, h, tile, overlap, multiple)
    # Same shape everywhere: no slivers, one batch shape.
    shapes = {(t.width, t.height) for t in tiles}
    assert len(shapes) == 1
    for length, side, (lo, hi) in ((w, tiles[0].width, ("x0", "x1")), (h, tiles[0].height, ("y0", "y1"))):
        spans = _axis(tiles, lo, hi)
        assert spans[0][0] == 0 and spans[-1][1] == length  # covers both ends, stays inside
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a0 < b0 and a1 - b0 >= overlap  # neighbours overlap by at least `overlap`
        n = len(spans)
        if n == 1:
            assert side == length <= tile
        else:
            assert (n - 2) * (tile - overlap) < length - tile  # the fewest tiles of side `tile`
            # fitted: a multiple of the padding (or the full tile), and one multiple less
            # could not cover the axis with n tiles
            assert side <= tile and (side == tile or side % multiple == 0)
            assert side == tile or n * (side - multiple) < length + (n - 1) * overlap
    # Row-major product grid.
    assert len(tiles) == len(_axis(tiles, "x0", "x1")) * len(_axis(tiles, "y0", "y1"))


def test_tiles_are_fitted_to_the_image():
    # 8K with 1024 tiles overlapping by 196: 10 x 5 tiles; fitted to 32-px padding they shrink to
    # 960 x 1024 (the 10 columns need only 945 px each), 6% fewer pixels than 1024 x 1024
    tiles = plan_tiles(7680, 4320, 1024, 196, 32)
    assert len(tiles) == 50 and (tiles[0].width, tiles[0].height) == (960, 1024)
    assert plan_tiles(7680, 4320, 1024, 196)[0].width == 945  # ceil((7680 + 9 * 196) / 10)


@given(grid_params(max_dim=300))
@settings(max_examples=100, deadline=None)
def test_tiles_cover_every_pixel(p):
    w, h, tile, overlap = p
    covered = np.zeros((h, w), bool)
    for t in plan_tiles(w, h, tile, overlap):
        assert 0 <= t.x0 < t.x1 <= w and 0 <= t.y0 < t.y1 <= h
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()


@st.composite
def box_in_grid(draw):
    tile = draw(st.integers(8, 2048))
    margin = draw(st.integers(0, 8))
    assume(2 * margin + 1 < tile)
    overlap = draw(st.integers(2 * margin + 1, tile - 1))
    cap = min(20000, tile + 100 * (tile - overlap))
    w = draw(st.integers(1, cap))
    h = draw(st.integers(1, cap))
    fmax = overlap - 2 * margin
    # Boxes of exactly the guaranteed size are the hard case: draw them often.
    bw = draw(st.one_of(st.just(float(min(fmax, w))), st.floats(0, min(fmax, w))))
    bh = draw(st.one_of(st.just(float(min(fmax, h))), st.floats(0, min(fmax, h))))
    x1 = draw(st.floats(0, w - bw))
    y1 = draw(st.floats(0, h - bh))
    return w, h, tile, overlap, margin, np.array([[x1, y1, x1 + bw, y1 + bh]])


@given(box_in_grid())
@settings(max_examples=400, deadline=None)
def test_every_small_box_is_whole_and_kept_in_some_tile(p):
    w, h, tile, overlap, margin, box = p
    assert _kept_somewhere(box, plan_tiles(w, h, tile, overlap), (1.0, 1.0), w, h, margin)


@given(box_in_grid())
@settings(max_examples=100, deadline=None)
def test_a_box_bigger_than_the_guarantee_can_be_dropped_everywhere(p):
    # The converse check that the property above is not vacuous: a box spanning a whole
    # tile-width plus one pixel touches an inner border in every tile that holds any of it.
    w, h, tile, overlap, margin, _ = p
    assume(w > tile + 2)
    box = np.array([[0.0, 0.0, float(w), float(min(h, 1))]])
    assert not _kept_somewhere(box, plan_tiles(w, h, tile, overlap), (1.0, 1.0), w, h, margin)


@st.composite
def box_in_pyramid(draw):
    margin = draw(st.integers(0, 4))
    tile = draw(st.integers(256, 2048))
    fmax = draw(st.integers(4, tile // 2))
    fmin = draw(st.integers(1, max(1, fmax // 2)))
    w = draw(st.integers(1, 60 * tile))
    h = draw(st.integers(1, 60 * tile))
    # Any box whose longer side is at most the image's shorter side (any face that fits).
    f = draw(st.one_of(st.just(float(min(w, h))), st.floats(0, min(w, h))))
    bw = draw(st.floats(0, f))
    bh = f if draw(st.booleans()) else draw(st.floats(0, f))
    bw, bh = (bw, f) if bh == f else (f, bh)
    x1 = draw(st.floats(0, w - bw))
    y1 = draw(st.floats(0, h - bh))
    return w, h, tile, fmax, fmin, margin, np.array([[x1, y1, x1 + bw, y1 + bh]])


@given(box_in_pyramid())
@settings(max_examples=300, deadline=None)
def test_pyramid_sees_every_face_whole_in_range_in_some_pass(p):
    w, h, tile, fmax, fmin, margin, box = p
    plan = plan_pyramid(w, h, tile, fmax, fmin, margin)
    assert plan.passes[0].scale == (1.0, 1.0) and plan.passes[0].min_face is None
    for ps in plan.passes:  # real overlap of neighbours, not the recorded value
        for lo, hi in (("x0", "x1"), ("y0", "y1")):
            spans = _axis(ps.tiles, lo, hi)
            assert all(a1 - b0 >= fmax + 2 * margin for (_, a1), (b0, _) in zip(spans, spans[1:]))
    assert plan.passes[-1].max_face is None
    assert any(
        _kept_somewhere(box, ps.tiles, ps.scale, ps.width, ps.height, margin, ps) for ps in plan.passes
    )


@given(st.integers(1, 40000), st.integers(1, 40000), st.integers(256, 2048), st.data())
@settings(max_examples=100, deadline=None)
def test_pyramid_scales_shrink_by_at_most_the_face_ratio(w, h, tile, data):
    fmax = data.draw(st.integers(4, tile // 2))
    fmin = data.draw(st.integers(1, fmax // 2))
    plan = plan_pyramid(w, h, tile, fmax, fmin, margin=2)
    for a, b in zip(plan.passes, plan.passes[1:]):
        assert min(b.scale) >= max(a.scale) * fmin / fmax - 1e-12
        assert b.width <= a.width and b.height <= a.height
    last = plan.passes[-1]
    assert min(w, h) * max(last.scale) <= fmax + 1e-9


@pytest.mark.parametrize(
    "fmax, margin, width",
    [
        (256, 2, 7680),
        # Widths where the tile steps come out exactly at (or one margin above) the largest step
        # allowed, so any slack in the overlap rule shows up as a face dropped at some seam.
        (256, 2, 1024 + 6 * (1024 - 256 - 2 * 2)),
        (256, 2, 1024 + 6 * (1024 - 256 - 2)),
        (200, 5, 1024 + 5 * (1024 - 200 - 5)),
        (300, 0, 1024 + 5 * (1024 - 300)),
    ],
)
def test_pyramid_full_resolution_pass_keeps_max_size_faces_at_every_position(fmax, margin, width):
    # Slide a face of exactly the largest guaranteed size across every seam of a row of tiles.
    w, h = width, 1500
    plan = plan_pyramid(w, h, 1024, fmax, 16, margin)
    ps = plan.passes[0]
    for x in range(0, w - fmax + 1):
        box = np.array([[x, 600.0, x + fmax, 600.0 + fmax]])
        assert _kept_somewhere(box, ps.tiles, ps.scale, ps.width, ps.height, margin, ps), x


def test_pyramid_for_8k_is_small():
    plan = plan_pyramid(7680, 4320, 1024, 256, 16, margin=2)
    assert plan.passes[0].tile_shape == (937, 1002)  # 6 x 10 tiles of at most 1024, fitted
    assert plan.passes[0].overlap == 260
    assert len(plan.passes) <= 3
    assert sum(len(p.tiles) for p in plan.passes[1:]) <= 3  # downscaled passes are single frames
    assert plan.num_tiles == sum(len(p.tiles) for p in plan.passes)


@given(
    st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 1000), st.floats(0, 500), st.floats(0, 500)), max_size=20),
    st.integers(0, 5000), st.integers(0, 5000), st.floats(0.01, 4.0), st.floats(0.01, 4.0),
)
@settings(max_examples=200, deadline=None)
def test_coordinate_mapping_round_trips(rows, x0, y0, sx, sy):
    boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in rows], np.float64).reshape(-1, 4)
    t = Tile(x0, y0, x0 + 1024, y0 + 1024)
    img = to_image_coords(boxes, t, (sx, sy))
    assert img.dtype == np.float32 and img.shape == boxes.shape
    back = to_tile_coords(img, t, (sx, sy))
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-2)
    # Scalar scale means the same on both axes.
    np.testing.assert_allclose(to_image_coords(boxes, t, sx), to_image_coords(boxes, t, (sx, sx)))


def test_to_image_coords_known_values():
    t = Tile(100, 50, 612, 562)
    out = to_image_coords(np.array([[10, 20, 30, 40]]), t, 0.5)
    np.testing.assert_array_equal(out, [[220, 140, 260, 180]])


def test_drop_cut_boxes_only_at_inner_borders():
    # Image 2000x1000 cut into tiles; the tile at the left image border, interior on the right.
    t = Tile(0, 0, 1024, 1000)
    boxes = np.array(
        [
            [0, 10, 50, 60],  # touches the image's left border: kept
            [980, 10, 1024, 60],  # touches the inner right border: dropped
            [970, 10, 1022.5, 60],  # within 2 px of it: dropped
            [500, 940, 540, 1000],  # touches the image's bottom border: kept
            [100, 100, 200, 200],  # interior: kept
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    kb, ks = drop_cut_boxes(boxes, scores, t, image_w=2000, image_h=1000, margin=2)
    np.testing.assert_array_equal(ks, scores[[0, 3, 4]])
    np.testing.assert_array_equal(kb, boxes[[0, 3, 4]])
    # A tile with inner borders on all sides drops a box touching any of them.
    inner = Tile(500, 500, 1524, 1524)
    m = keep_mask(np.array([[0, 10, 20, 20], [10, 0, 20, 20], [10, 10, 1024, 20], [10, 10, 20, 1024],
                            [10, 10, 20, 20]]), inner, 4000, 4000, 2)
    assert m.tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        drop_cut_boxes(np.zeros((2, 4)), np.zeros(1), t, 2000, 1000, 2)


def test_single_tile_drops_nothing():
    t = plan_tiles(640, 480, 1024, 100)
    assert t == [Tile(0, 0, 640, 480)]
    boxes = np.array([[0, 0, 640, 480], [600, 400, 640, 480]], np.float32)
    assert keep_mask(boxes, t[0], 640, 480, 5).all()


@pytest.mark.parametrize(
    "args, message",
    [
        ((100, 100, 64, 64), "overlap < tile"),
        ((100, 100, 64, -1), "overlap < tile"),
        ((0, 100, 64, 8), "positive"),
        ((100, 100, 64.0, 8), "must be an int"),
        ((100, 100, 64, 8, 0), "multiple must be >= 1"),
    ],
)
def test_plan_tiles_validates(args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        plan_tiles(*args)


def test_plan_pyramid_validates():
    with pytest.raises(ValueError, match="too small for faces"):
        plan_pyramid(5000, 5000, 512, 510, 16, margin=2)
    with pytest.raises(ValueError, match="min_face_at_tile < max_face_at_tile"):
        plan_pyramid(5000, 5000, 1024, 64, 64)
    with pytest.raises(ValueError, match="more than"):
        plan_pyramid(40000, 40000, 1024, 400, 398, margin=0)


def test_tile_crop_is_a_view():
    img = np.arange(20 * 30).reshape(20, 30)
    t = Tile(5, 2, 15, 12)
    c = t.crop(img)
    assert c.shape == (10, 10) and c[0, 0] == img[2, 5] and np.shares_memory(c, img)
    with pytest.raises(ValueError):
        Tile(5, 5, 5, 10)


@pytest.mark.parametrize(
    "w, h, spec, max_input, expected",
    [
        (7680, 4320, "off", None, None),
        (1920, 1080, "auto", None, None),
        (2048, 1536, "auto", None, None),
        (2049, 1536, "auto", None, 1024),
        (7680, 4320, "auto", None, 1024),
        (7680, 4320, "AUTO", 640, 640),
        (1000, 800, "auto", 640, 640),
        (600, 400, "auto", 640, None),
        (7680, 4320, "512", None, 512),
        (7680, 4320, " 768 ", 1024, 768),
    ],
)
def test_choose_tile_size(w, h, spec, max_input, expected):
    assert choose_tile_size(w, h, spec, max_input) == expected


@pytest.mark.parametrize(
    "spec, max_input, message",
    [("big", None, "'auto', 'off' or an integer"), ("32", None, ">= 64"), ("2048", 1024, "exceeds")],
)
def test_choose_tile_size_rejects(spec, max_input, message):
    with pytest.raises(ValueError, match=message):
        choose_tile_size(4000, 3000, spec, max_input)
