from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rfdeploy.train.augment import (
    MEAN_FILL,
    RefineFaceAugment,
    apply_colour,
    colour_matrix,
    hflip,
    letterbox,
    map_boxes,
)

RED = (250, 10, 10)


def square_image(w=400, h=300, box=(120, 80, 220, 180)):
    arr = np.full((h, w, 3), (20, 120, 20), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = RED
    return arr, np.array([box], np.float32)


def red_mask(arr):
    a = arr.astype(int)
    return (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)


def test_augment_keeps_box_on_the_square():
    img, boxes = square_image()
    aug = RefineFaceAugment(size=160, photometric=False)
    kept = 0
    for seed in range(40):
        out, b, ig = aug(img, boxes, np.zeros(1, bool), np.random.default_rng(seed))
        assert out.shape == (160, 160, 3) and out.dtype == np.uint8
        red = red_mask(out)
        if len(b) == 0:
            continue
        kept += 1
        x1, y1, x2, y2 = b[0]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
        region = red[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)]
        assert region.size == 0 or region.mean() > 0.9
        ys, xs = np.nonzero(red)
        # all red pixels sit in the box (1 px of resampling slack)
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
        assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
    assert kept > 30  # crops are retried until they hold the face


def test_expand_pads_with_mean_colour():
    img, boxes = square_image()
    aug = RefineFaceAugment(size=128, expand=(2.0, 2.0), crop_scale=(1.0, 1.0), photometric=False)
    seen_fill = False
    for seed in range(10):
        out, _, _ = aug(img, boxes, None, np.random.default_rng(seed))
        seen_fill |= bool((out.reshape(-1, 3) == np.array(MEAN_FILL)).all(axis=1).any())
    assert seen_fill


def test_flip_correctness():
    img, boxes = square_image(box=(10, 50, 60, 120))
    pil, fb = hflip(Image.fromarray(img), boxes)
    arr = np.asarray(pil)
    assert np.array_equal(arr, img[:, ::-1])
    np.testing.assert_allclose(fb, [[340, 50, 390, 120]])
    ys, xs = np.nonzero(red_mask(arr))
    assert (xs.min(), xs.max() + 1) == (340, 390)

    no = RefineFaceAugment(size=100, p_flip=0.0, photometric=False)
    yes = RefineFaceAugment(size=100, p_flip=1.0, photometric=False)
    a, ba, _ = no(img, boxes, None, np.random.default_rng(3))
    b, bb, _ = yes(img, boxes, None, np.random.default_rng(3))
    assert np.array_equal(a[:, ::-1], b)
    np.testing.assert_allclose(bb[:, [0, 2]], 100 - ba[:, [2, 0]], atol=1e-4)


def test_map_boxes_drops_outside_centres_and_ignores_tiny():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 70, 70], [90, 90, 140, 140], [60, 20, 61, 21]], np.float32)
    ig = np.array([False, False, True, False])
    b, i = map_boxes(boxes, ig, x0=20, y0=10, kx=2.0, ky=2.0, out_w=200, out_h=200, min_box=2.0)
    # first: centre (5,5) is left of the patch -> dropped; third centre (115,115) -> (190,210): dropped
    np.testing.assert_allclose(b, [[60, 80, 100, 120], [80, 20, 82, 22]])
    assert i.tolist() == [False, False]
    b, i = map_boxes(boxes[3:], ig[3:], 20, 10, 1.0, 1.0, 200, 200, 2.0)
    assert i.tolist() == [True]  # 1x1 px after the resize


def test_augment_is_deterministic_and_validates():
    img, boxes = square_image()
    aug = RefineFaceAugment(size=96)
    a = aug(img, boxes, None, np.random.default_rng(11))
    b = aug(img, boxes, None, np.random.default_rng(11))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        RefineFaceAugment(expand=(0.5, 2.0))
    with pytest.raises(ValueError):
        aug(np.zeros((10, 10), np.uint8), boxes, None, np.random.default_rng(0))


def test_colour_matrix():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    same = np.asarray(apply_colour(img, colour_matrix())).astype(int)
    assert np.abs(same - np.asarray(img)).max() <= 1
    grey = np.asarray(apply_colour(img, colour_matrix(saturation=0.0))).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1
    bright = np.asarray(apply_colour(img, colour_matrix(delta=40))).astype(int)
    assert (bright >= np.minimum(np.asarray(img).astype(int) + 39, 255)).all()


def test_letterbox():
    img, boxes = square_image(w=400, h=200, box=(100, 50, 200, 150))
    out, b, ig = letterbox(img, boxes, None, 200)
    assert out.shape == (200, 200, 3)
    np.testing.assert_allclose(b, [[50, 25, 100, 75]])
    assert (out[100:] == MEAN_FILL).all()


def test_grey_share_turns_samples_black_and_white_and_leaves_the_rest_in_colour():
    img, boxes = square_image()
    grey_always = RefineFaceAugment(size=96, p_grey=1.0, expand=(1.0, 1.0))
    never = RefineFaceAugment(size=96, p_grey=0.0, expand=(1.0, 1.0), photometric=False)
    for seed in range(5):
        out = grey_always(img, boxes, None, np.random.default_rng(seed))[0].astype(int)
        assert np.abs(out[..., 0] - out[..., 1]).max() <= 1 and np.abs(out[..., 1] - out[..., 2]).max() <= 1
        kept = never(img, boxes, None, np.random.default_rng(seed))[0]
        assert red_mask(kept).any()  # the red square is still red: no grey without p_grey
    with pytest.raises(ValueError):
        RefineFaceAugment(p_grey=1.5)
