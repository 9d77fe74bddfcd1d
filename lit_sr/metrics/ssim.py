"""SSIM, per image then averaged, on the Y channel or RGB, after a border crop (BasicSR's protocol)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_sr.metrics.base import FullReferenceMetric


class SSIM(FullReferenceMetric):
    """Structural similarity of Wang et al. (2004) as the SR literature computes it.

    11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population
    (co)variances, averaged over the "valid" region only (no padded borders) and over channels
    — the settings of the reference MATLAB code, BasicSR's ``calculate_ssim`` and skimage's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

    Args:
        crop_border: pixels dropped on each side; SR papers use the scale factor (4 for ×4).
        y_channel: score BT.601 Y (the literature's default) instead of RGB.
    """

    name = "ssim"
    label = "SSIM"
    higher_is_better = True

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        sr, hq = self.prepare(sr, hq)
        if min(sr.shape[-2:]) < 11:
            raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {tuple(sr.shape[-2:])}")
        return ssim_per_image(sr, hq)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_per_image(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean SSIM of each image pair in ``(B, C, H, W)`` batches, valid-mode filtering, shape ``(B,)``.

    (torchmetrics' functional SSIM averages over the reflect-padded borders too, which moves
    values by ~1e-3 against the reference; hence this short implementation.)
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ch = x.shape[1]
    kernel = _gaussian_window(window, sigma, x).expand(ch, 1, window, window)
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), kernel, groups=ch)
    mu_x, mu_y, xx, yy, xy = stats.split(x.shape[0])
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))
