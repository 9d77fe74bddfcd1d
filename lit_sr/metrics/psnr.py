"""PSNR, per image then averaged, on the Y channel or RGB, after a border crop (BasicSR's protocol)."""
from __future__ import annotations

from typing import Any

import torch

from lit_sr.metrics.base import PerImageMetric
from lit_sr.metrics.color import crop_border, rgb_to_y

# Identical images have infinite PSNR, which would swamp a dataset mean; capping the MSE at
# 1e-10 caps a single image at 100 dB and leaves every realistic value untouched.
_MIN_MSE = 1e-10


class PSNR(PerImageMetric):
    """Peak signal-to-noise ratio in dB (data range 1).

    Args:
        crop_border: pixels dropped on each side; SR papers use the scale factor (4 for ×4).
        y_channel: score BT.601 Y (the literature's default) instead of RGB.
    """

    name = "psnr"
    label = "PSNR"
    full_reference = True
    higher_is_better = True

    def __init__(self, crop_border: int = 4, y_channel: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {crop_border}")
        self.crop_border = int(crop_border)
        self.y_channel = bool(y_channel)

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        assert hq is not None
        sr, hq = sr.to(torch.float64), hq.to(torch.float64)
        if self.y_channel:
            sr, hq = rgb_to_y(sr), rgb_to_y(hq)
        sr, hq = crop_border(sr, self.crop_border), crop_border(hq, self.crop_border)
        mse = (sr - hq).square().mean(dim=(1, 2, 3)).clamp_min(_MIN_MSE)
        return -10.0 * torch.log10(mse)
