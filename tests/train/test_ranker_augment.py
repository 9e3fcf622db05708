"""The ranker's training augmentation (crop, shrink, colour, flip) keeps each candidate row on
the image content it described, with its own oracle value."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rfdeploy.train.trainer import RankerSamples  # noqa: E402

H, W, PAD = 96, 128, 32  # valid image 96 x 128 inside a 128 x 160 padded tensor


def _item(n=8, seed=0):
    """A dark image with one bright square per candidate; candidate i's box is its square, its
    oracle value is i + 1 (an id to follow the row through the augmentation)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((3, H + PAD, W + PAD), np.float32)
    x[:, :H, :W] = -1.0
    cand = np.zeros((n + 4, 5), np.float32)  # 4 padding rows
    oracle = np.zeros(n + 4, np.float32)
    for i in range(n):
        bw, bh = int(rng.integers(10, 20)), int(rng.integers(10, 20))
        x0, y0 = int(rng.integers(0, W - bw)), int(rng.integers(0, H - bh))
        x[:, y0:y0 + bh, x0:x0 + bw] = 2.0
        cand[i] = (x0 / W, y0 / H, bw / W, bh / H, 0.9 - 0.05 * i)
        oracle[i] = i + 1
    return x, cand, oracle


def _inside_mean(x, row):
    """Mean of the first channel over the central half of a candidate's box (valid size H x W)."""
    cx, cy = (row[0] + row[2] / 2) * W, (row[1] + row[3] / 2) * H
    hw, hh = max(1, row[2] * W / 4), max(1, row[3] * H / 4)
    ys = slice(int(max(0, cy - hh)), int(min(H, cy + hh)) + 1)
    xs = slice(int(max(0, cx - hw)), int(min(W, cx + hw)) + 1)
    return float(x[0, ys, xs].mean())


def test_geometric_steps_keep_rows_packed_ordered_and_on_their_oracle():
    item = _item()
    ds = RankerSamples([item] * 40, flip=True, augment=True, seed=3)
    _, cand0, oracle0 = item
    n0 = int((cand0[:, 4] > 0).sum())
    changed = dropped = 0
    for i in range(len(ds)):
        x, cand, oracle = (t.numpy() for t in ds[i])
        live = cand[:, 4] > 0
        n = int(live.sum())
        assert live[:n].all(), "live rows must stay packed at the top"
        assert np.all(np.diff(cand[:n, 4]) <= 0), "rows must keep their score order"
        assert np.all(oracle[~live] == 0)
        for row, o in zip(cand[:n], oracle[:n]):
            src = int(np.argmin(np.abs(cand0[:, 4] - row[4])))  # scores are unique: they name the source row
            assert o == oracle0[src], "a row's oracle must travel with it"
        dropped += n < n0
        changed += n < n0 or not np.allclose(cand[:n, :4], cand0[:n, :4])
    assert changed > 10, "the augmentation should move boxes in most samples"
    assert dropped > 0, "zoom-in crops should drop candidates whose centre leaves the window"


def test_boxes_cover_bright_squares_after_augmentation():
    """Stronger check on the geometry alone: inside every surviving box (centre well inside the
    image) the image is bright, outside all boxes it is dark."""
    item = _item(n=5, seed=1)
    ds = RankerSamples([item] * 30, flip=True, augment=True, seed=5)
    for i in range(len(ds)):
        x, cand, _ = (t.numpy() for t in ds[i])
        gain_ref = x[0, :H, :W].max()
        for row in cand[cand[:, 4] > 0]:
            cx, cy = row[0] + row[2] / 2, row[1] + row[3] / 2
            if 0.1 < cx < 0.9 and 0.1 < cy < 0.9:
                assert _inside_mean(x, row) > 0.5 * gain_ref, f"sample {i}: box {row[:4]} left its square"


def test_padding_stays_zero_and_colour_changes_the_image():
    x0, cand0, oracle0 = _item()
    ds = RankerSamples([(x0, cand0, oracle0)] * 12, flip=False, augment=True, seed=0)
    differs = 0
    for i in range(len(ds)):
        x = ds[i][0].numpy()
        assert np.all(x[:, H:, :] == 0) and np.all(x[:, :, W:] == 0), "padding must stay the mean colour (0)"
        differs += not np.allclose(x, x0)
    assert differs == len(ds), "colour jitter applies to every augmented sample"


def test_without_augment_only_the_flip_applies():
    x0, cand0, oracle0 = _item()
    ds = RankerSamples([(x0, cand0, oracle0)], flip=False, augment=False)
    x, cand, oracle = (t.numpy() for t in ds[0])
    assert np.array_equal(x, x0) and np.array_equal(cand, cand0) and np.array_equal(oracle, oracle0)


def test_scale_range_is_validated():
    with pytest.raises(ValueError, match="scale_range"):
        RankerSamples([], scale_range=(0.0, 1.0))
