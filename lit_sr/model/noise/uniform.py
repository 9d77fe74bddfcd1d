"""OSEDiff's uniform one-step scheme: the clean LQ latent at a fixed t (999).

The denoiser sees z_L as if it were the noisy input at t and ẑ is the parameterisation's x₀ of
its prediction: ``(z_L − √(1−ᾱ_t)·ε̂)/√ᾱ_t`` for ε-prediction, ``z_L − σ_t·v̂`` for flow matching
(σ_999 = 1: ẑ = z_L − v̂, the one-step form of flow-based SR such as TSD-SR).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from lit_sr.model.noise.base import NoiseContext, NoiseStrategy

log = logging.getLogger(__name__)


class UniformNoise(NoiseStrategy):
    """ẑ = x₀(prediction at z_L) at one fixed t for training and inference.

    There is no trade-off knob: a knob passed at inference has no effect (logged once).
    """

    has_knob = False

    def __init__(self, timestep: int = 999) -> None:
        super().__init__()
        self.timestep = int(timestep)
        self._warned_knob = False

    def attach(self, parameterisation) -> None:
        super().attach(parameterisation)
        if not 0 <= self.timestep < self.num_train_timesteps:
            raise ValueError(f"noise.timestep={self.timestep} outside [0, {self.num_train_timesteps})")

    def parse_knob(self, knob: Any) -> Any:
        if knob is not None and not self._warned_knob:
            log.warning("noise=uniform has no fidelity-realism knob; knob=%r is ignored", knob)
            self._warned_knob = True
        return None

    def knob_help(self) -> str:
        return f"no knob: one fixed timestep (t={self.timestep})"

    def timesteps(self, ctx: NoiseContext) -> torch.Tensor:
        if ctx.knob is not None:
            self.parse_knob(ctx.knob)
        return self.full_timesteps(self.timestep, ctx.z_lq)

    def denoiser_input(self, ctx: NoiseContext, t: torch.Tensor) -> torch.Tensor:
        return ctx.z_lq
