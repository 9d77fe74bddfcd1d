"""LPIPS-VGG as an evaluation metric (mean over images; lower is better)."""
from __future__ import annotations

from typing import Any

import torch

from lit_sr.metrics.base import FrozenNetMetric, require_weights
from lit_sr.model.lpips import LPIPS


class LPIPSMetric(FrozenNetMetric):
    """Mean LPIPS v0.1 'vgg' distance between SR and HQ.

    Args:
        vgg_weights: torchvision ImageNet VGG16 file (``vgg16-397923af.pth``).
        lpips_weights: lpips' linear heads (``lpips/weights/v0.1/vgg.pth``).
        allow_random: without both files, score with seeded random weights instead of raising
            :class:`MetricUnavailable` (numbers are then only comparable with each other).
    """

    name = "lpips"
    label = "LPIPS"
    full_reference = True
    higher_is_better = False

    def __init__(
        self, vgg_weights: str | None = None, lpips_weights: str | None = None, allow_random: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.calibrated = require_weights("LPIPS", allow_random, vgg_weights=vgg_weights, lpips_weights=lpips_weights)
        self.net = LPIPS(vgg_weights=vgg_weights, lpips_weights=lpips_weights)

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        assert hq is not None
        return self.net(sr, hq)
