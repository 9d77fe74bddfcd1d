"""Colour cast of an SR output: the largest per-channel mean difference from the HQ, in 8-bit levels."""
from __future__ import annotations

import torch

from lit_sr.metrics.base import FullReferenceMetric


class ColourShift(FullReferenceMetric):
    """Colour cast in 8-bit levels: the largest per-channel mean difference ``max_c |mean(SR_c − HQ_c)|·255``.

    Always on RGB (a cast is a chroma error Y-channel scores cannot see), after the border crop.
    Bicubic upsampling scores about 0; a decoder that drifts in colour scores tens of levels.
    """

    name = "colour"
    label = "ColourShift"
    higher_is_better = False

    def __init__(self, crop_border: int = 4, **kwargs) -> None:
        super().__init__(crop_border=crop_border, y_channel=False, **kwargs)

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        sr, hq = self.prepare(sr, hq)
        return (sr - hq).mean(dim=(2, 3)).abs().amax(dim=1) * 255.0
