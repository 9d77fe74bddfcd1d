"""Pixel mean-squared error between SR and HQ."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.base import ImageLoss


class MSELoss(ImageLoss):
    """``mean((sr - hq)^2)`` on [0, 1] images (OSEDiff's data term, up to range scale)."""

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred.float(), target.float())
