"""The record one generator step returns; loss terms read what they need from it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lit_sr.model.condition import Condition


@dataclass
class SROutput:
    """Everything a training step may need from one generator pass.

    Images are in [0, 1]; latents are in the VAE's scaled latent space.
    """

    sr: torch.Tensor  # (B, 3, H, W) super-resolved image in [0, 1]
    z_hat: torch.Tensor  # (B, C, h, w) predicted clean latent
    z_lq: torch.Tensor  # (B, C, h, w) latent of the upsampled LQ
    t: torch.Tensor  # (B,) long timesteps of the pass (integers in [0, T))
    pred: torch.Tensor  # (B, C, h, w) the denoiser's prediction (ε, v or flow velocity: the parameterisation's)
    cond: Condition  # what the denoiser was conditioned on
    lq_up: torch.Tensor  # (B, 3, H, W) upsampled LQ in [0, 1]
    z_in: torch.Tensor  # (B, C, h, w) the latent the denoiser saw (z_L, or noised)
    z_hq: torch.Tensor | None = None  # (B, C, h, w) HQ latent, when the noise strategy asked for it
    extras: dict = field(default_factory=dict)  # the noise strategy's values of this pass (NoiseContext.extras)
