"""OSEDiff's perceptual data term: mean LPIPS-VGG between SR and HQ (the network: :mod:`lit_sr.model.lpips`)."""
from __future__ import annotations

import torch

from lit_sr.model.lpips import LPIPS
from losses.base import ImageLoss


class LPIPSLoss(ImageLoss):
    """Mean LPIPS-VGG between SR and HQ (OSEDiff's perceptual data term)."""

    def __init__(self, weight: float = 1.0, vgg_weights: str | None = None, lpips_weights: str | None = None) -> None:
        super().__init__(weight)
        self.lpips = LPIPS(vgg_weights=vgg_weights, lpips_weights=lpips_weights)

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(pred, target).mean()
