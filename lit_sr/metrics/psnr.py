"""PSNR, per image then averaged, on the Y channel or RGB, after a border crop (BasicSR's protocol)."""
from __future__ import annotations

import torch

from lit_sr.metrics.base import FullReferenceMetric

# Identical images have infinite PSNR, which would swamp a dataset mean; capping the MSE at
# 1e-10 caps a single image at 100 dB and leaves every realistic value untouched.
_MIN_MSE = 1e-10


class PSNR(FullReferenceMetric):
    """Peak signal-to-noise ratio in dB (data range 1).

    Args:
        crop_border: pixels dropped on each side; SR papers use the scale factor (4 for ×4).
        y_channel: score BT.601 Y (the literature's default) instead of RGB.
    """

    name = "psnr"
    label = "PSNR"
    higher_is_better = True

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        sr, hq = self.prepare(sr, hq)
        mse = (sr - hq).square().mean(dim=(1, 2, 3)).clamp_min(_MIN_MSE)
        return -10.0 * torch.log10(mse)

