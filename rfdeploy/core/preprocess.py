"""Pixels -> network input, following a model's PreprocessContract.

This is the only implementation: the runtime, calibration and training all call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rfdeploy.core.contract import PreprocessContract


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the input tensor: input = image * scale, padded bottom/right."""

    scale: float
    image_size: tuple[int, int]  # (width, height) of the source image
    input_size: tuple[int, int]  # (width, height) of the tensor after padding

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map x1,y1,x2,y2 boxes from input-tensor pixels back to source-image pixels."""
        out = np.asarray(boxes, dtype=np.float32) / self.scale
        w, h = self.image_size
        out[..., 0::2] = out[..., 0::2].clip(0, w)
        out[..., 1::2] = out[..., 1::2].clip(0, h)
        return out


def padded_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    return (-(-width // multiple) * multiple, -(-height // multiple) * multiple)


def target_scale(width: int, height: int, contract: PreprocessContract) -> float:
    if contract.resize == "long_side":
        return contract.resize_to / max(width, height)
    return 1.0


def preprocess(
    rgb: np.ndarray, contract: PreprocessContract, min_size: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """HxWx3 uint8 RGB -> (1x3xHpxWp float32, Letterbox).

    ``min_size`` (width, height) pads further, so several images can share one batch shape.
    ``out``: a zero-filled 3xHpxWp float32 array (a row of a batch) to write into instead of a new
    array; it is returned with a batch axis of 1 (a view). ``rgb`` may be a strided view (a tile).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    scale = target_scale(w, h, contract)
    if scale != 1.0:
        from PIL import Image

        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((nw, nh), Image.BILINEAR))
    else:
        nw, nh = w, h
    pw, ph = padded_size(nw, nh, contract.pad_multiple)
    if min_size is not None:
        pw, ph = max(pw, min_size[0]), max(ph, min_size[1])
    if out is None:
        # zero after normalisation = the mean colour; only the padding is zeroed, the image area
        # is written below (a full zero fill costs an extra pass over the tensor)
        out = np.empty((3, ph, pw), np.float32)
        out[:, nh:, :] = 0
        out[:, :nh, nw:] = 0
    elif out.shape != (3, ph, pw) or out.dtype != np.float32:
        raise ValueError(f"out must be a 3x{ph}x{pw} float32 array, got {out.shape} {out.dtype}")
    mean = np.asarray(contract.mean, np.float32)
    inv_std = 1.0 / np.asarray(contract.std, np.float32)
    src = rgb[..., ::-1] if contract.channel_order == "BGR" else rgb
    # channel by channel straight into the planar output: no float HxWx3 copy, no transpose
    # (an order of magnitude faster than the vectorised one-liner at VGA)
    for c in range(3):
        dst = out[c, :nh, :nw]
        np.subtract(src[..., c], mean[c], out=dst, dtype=np.float32)
        if inv_std[c] != 1.0:  # mean-only contracts (RetinaFace's BGR - mean) skip a pass
            dst *= inv_std[c]
    return out[None], Letterbox(scale=scale if scale != 1.0 else 1.0, image_size=(w, h), input_size=(pw, ph))


def preprocess_torch(rgb, contract: PreprocessContract, min_size: tuple[int, int] | None = None):
    """The same contract on a torch uint8 HxWx3 tensor (any device): for GPU pre-processing."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or str(rgb.dtype) != "torch.uint8":
        raise ValueError(f"expected an HxWx3 uint8 tensor, got {tuple(rgb.shape)} {rgb.dtype}")
    h, w = rgb.shape[:2]
    scale = target_scale(w, h, contract)
    nw, nh = (max(1, round(w * scale)), max(1, round(h * scale))) if scale != 1.0 else (w, h)
    pw, ph = padded_size(nw, nh, contract.pad_multiple)
    if min_size is not None:
        pw, ph = max(pw, min_size[0]), max(ph, min_size[1])
    x = to_input_torch(resize_torch(rgb, nw, nh), contract, pw, ph)
    return x, Letterbox(scale=scale, image_size=(w, h), input_size=(pw, ph))


# Float scratch of one strip when resizing a torch image (elements): an 8K image as float32 is
# 0.4 GB, so only strips of it are ever converted; 16 M elements keeps the kernels large.
RESIZE_STRIP_ELEMENTS = 1 << 24


def resize_torch(rgb, width: int, height: int):
    """uint8 HxWx3 tensor -> uint8 ``height`` x ``width`` x 3 on the tensor's device: bilinear with
    antialiasing as Pillow's BILINEAR does it (a horizontal pass, then a vertical one, each rounded
    to uint8), which lands within one level of Pillow. Each pass works on strips along the axis it
    does not resize (those are independent), so the float copies stay strip-sized."""
    h, w = rgb.shape[:2]
    if w != width:
        rgb = _resize_axis(rgb, width, axis=1)
    if h != height:
        rgb = _resize_axis(rgb, height, axis=0)
    return rgb


def _resize_axis(rgb, size: int, axis: int):
    import torch
    import torch.nn.functional as F

    h, w = rgb.shape[:2]
    out = torch.empty((size, w, 3) if axis == 0 else (h, size, 3), dtype=torch.uint8, device=rgb.device)
    length, across = (h, w) if axis == 0 else (w, h)
    step = max(1, RESIZE_STRIP_ELEMENTS // (3 * max(length, size)))
    for s in range(0, across, step):
        part = rgb[:, s:s + step] if axis == 0 else rgb[s:s + step]
        x = part.permute(2, 0, 1).unsqueeze(0).float()
        target = (size, x.shape[3]) if axis == 0 else (x.shape[2], size)
        y = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
        y = y.add_(0.5).floor_().clamp_(0, 255)[0].permute(1, 2, 0)  # Pillow rounds half up
        if axis == 0:
            out[:, s:s + step] = y
        else:
            out[s:s + step] = y
    return out


def to_input_torch(rgb, contract: PreprocessContract, width: int, height: int):
    """uint8 hxwx3 tensor -> float32 1x3x``height``x``width`` network input on its device: the
    contract's channel order and normalisation, zero-padded bottom/right (zero = the mean colour).
    Channel by channel into the output, with the numpy path's arithmetic (same float32 values)."""
    import torch

    h, w = rgb.shape[:2]
    out = torch.zeros((1, 3, height, width), dtype=torch.float32, device=rgb.device)
    mean = np.asarray(contract.mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(contract.std, np.float32)
    order = (2, 1, 0) if contract.channel_order == "BGR" else (0, 1, 2)
    for c, src in enumerate(order):
        dst = out[0, c, :h, :w]
        dst.copy_(rgb[..., src])
        dst.sub_(float(mean[c])).mul_(float(inv_std[c]))
    return out
