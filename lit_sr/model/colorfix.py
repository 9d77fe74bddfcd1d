"""Colour correction of SR outputs towards the (upsampled) LQ colours.

Diffusion decoders drift in global colour; the common remedies (StableSR, OSEDiff) are

* ``adain``: per-image, per-channel mean and std of the SR set to those of the LQ;
* ``wavelet``: the SR's high-frequency bands kept, its low-frequency residual replaced by the LQ's
  (a 5-level à-trous decomposition with a 3×3 binomial kernel dilated 2^i).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "adain", "wavelet")


def adain(sr: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu_s, sd_s = sr.mean(dim=(2, 3), keepdim=True), sr.std(dim=(2, 3), keepdim=True)
    mu_r, sd_r = ref.mean(dim=(2, 3), keepdim=True), ref.std(dim=(2, 3), keepdim=True)
    return ((sr - mu_s) / (sd_s + eps) * sd_r + mu_r).clamp(0, 1)


def _atrous_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=dilation)


def _split(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high-frequency sum, low-frequency residual) with x = high + low."""
    low = x
    high = torch.zeros_like(x)
    for i in range(levels):
        blurred = _atrous_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet(sr: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    high, _ = _split(sr, levels)
    _, low = _split(ref, levels)
    return (high + low).clamp(0, 1)


def color_fix(sr: torch.Tensor, ref: torch.Tensor, method: str = "none") -> torch.Tensor:
    """Apply ``method`` (one of :data:`COLOR_FIXES`); ``ref`` is the LQ upsampled to SR size."""
    if method == "none":
        return sr
    if ref.shape != sr.shape:
        ref = F.interpolate(ref, size=sr.shape[-2:], mode="bicubic", align_corners=False)
    if method == "adain":
        return adain(sr, ref)
    if method == "wavelet":
        return wavelet(sr, ref)
    raise ValueError(f"unknown colour fix {method!r}; use one of {COLOR_FIXES}")
