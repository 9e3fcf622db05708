"""preprocess: the image area normalised by the contract, the padding exactly the mean colour (0)."""

import numpy as np
import pytest

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.preprocess import preprocess


@pytest.mark.parametrize("hw", [(480, 640), (97, 255), (33, 31)])
def test_image_area_is_normalised_and_padding_is_zero(hw):
    h, w = hw
    c = PreprocessContract(mean=(104.0, 117.0, 123.0), std=(1.0, 2.0, 4.0), channel_order="BGR", pad_multiple=32)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    for _ in range(3):  # freed buffers of the same size filled with garbage: the padding must not show it
        np.full((3, ph, pw), np.nan, np.float32)
    x, lb = preprocess(rgb, c)
    assert x.shape == (1, 3, ph, pw) and lb.input_size == (pw, ph)
    bgr = rgb[..., ::-1].astype(np.float32)
    expect = (bgr - np.float32([104, 117, 123])) / np.float32([1, 2, 4])
    assert np.allclose(x[0, :, :h, :w], expect.transpose(2, 0, 1))
    assert not x[0, :, h:, :].any() and not x[0, :, :, w:].any()
    assert np.isfinite(x).all()
