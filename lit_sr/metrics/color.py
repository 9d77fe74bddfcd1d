"""Colour and border conventions of the SR literature (BasicSR / MATLAB)."""
from __future__ import annotations

import torch

# ITU-R BT.601 luma as MATLAB's rgb2ycbcr computes it (BasicSR's ``rgb2ycbcr(y_only=True)``):
# studio range, Y in [16, 235] / 255 for RGB in [0, 1].
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] → ``(B, 1, H, W)`` BT.601 Y in [16/255, 235/255]."""
    w = img.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return (16.0 + (img * w).sum(dim=1, keepdim=True)) / 255.0


def rgb_to_luma(img: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] → full-range luma ``0.299R + 0.587G + 0.114B`` (YIQ's Y),
    the channel pyiqa's NIQE scores by default."""
    w = img.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


def crop_border(img: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on each side (SR papers skip the ×scale border when scoring)."""
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    if border == 0:
        return img
    h, w = img.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"image of {h}x{w} pixels is too small for crop_border={border}")
    return img[..., border:-border, border:-border]
