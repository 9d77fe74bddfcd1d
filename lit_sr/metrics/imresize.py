"""MATLAB ``imresize`` (bicubic, antialiased) as separable resampling matrices.

NIQE's second scale is defined through MATLAB's resize, whose antialiasing (a cubic kernel
stretched by 1/scale) and symmetric border handling differ from ``F.interpolate``; values of
published NIQE numbers depend on it.
"""
from __future__ import annotations

import math

import torch


def _cubic(x: torch.Tensor) -> torch.Tensor:
    # Keys' cubic convolution kernel with a = -0.5 (MATLAB's "bicubic").
    ax = x.abs()
    ax2, ax3 = ax.square(), ax.pow(3)
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return (near + far).to(x.dtype)


def resize_matrix(
    in_len: int, scale: float, antialias: bool = True, dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``(out_len, in_len)`` matrix ``M`` such that ``M @ signal`` is MATLAB's 1-D bicubic resize."""
    out_len = math.ceil(in_len * scale)
    width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        width /= scale  # the kernel is stretched so it also low-passes
    x = torch.arange(1, out_len + 1, dtype=dtype, device=device)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in 1-based input coordinates
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=dtype, device=device)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # 1-based → 0-based, mirrored at the borders the way MATLAB pads ("symmetric": edge repeated).
    i0 = idx.long() - 1
    i0 = torch.where(i0 < 0, -i0 - 1, i0)
    i0 = torch.where(i0 >= in_len, 2 * in_len - 1 - i0, i0)
    m = torch.zeros(out_len, in_len, dtype=dtype, device=device)
    m.scatter_add_(1, i0, w)
    return m


def imresize(img: torch.Tensor, scale: float, antialias: bool = True) -> torch.Tensor:
    """Resize the last two dims of ``img`` by ``scale`` like MATLAB's ``imresize(img, scale)``."""
    h, w = img.shape[-2:]
    mh = resize_matrix(h, scale, antialias, img.dtype, img.device)
    mw = resize_matrix(w, scale, antialias, img.dtype, img.device)
    return mh @ img @ mw.T
