"""Plain noise injection at a chosen t: RGPA without its region weights (CODSR's ablation baseline).

    z_t = a_t·z_L + b_t·ε,   ẑ = z_L + c_t·(target(z_L, ε) − prediction)

with the backbone's parameterisation: for ε-prediction a_t = √ᾱ_t, b_t = √(1−ᾱ_t), target ε and
c_t = w_t = √(1−ᾱ_t)/√ᾱ_t (ẑ = z_L + w_t·(ε − ε̂)); for flow matching a_t = 1 − σ_t, b_t = σ_t,
target ε − z_L and c_t = σ_t. ẑ is the parameterisation's x₀ of the prediction at z_t, written
around z_L (the same value without subtracting two large terms).

Every latent pixel gets the same noise, so comparing ``noise=noised`` with ``noise=rgpa`` at the
same t isolates what RGPA's gradient-weighted map adds. Training draws t from [t_min, t_max];
the inference knob is t (larger t: more generated detail, less fidelity).
"""
from __future__ import annotations

from typing import Any

import torch

from lit_sr.model.noise.base import NoiseContext, NoiseStrategy, parse_timestep


class NoisedLatent(NoiseStrategy):
    """Gaussian noise on z_L at t, optionally weighted per latent pixel (:meth:`noise_weight`); knob = t.

    Subclasses change only the weight: RGPA (:class:`~lit_sr.model.noise.rgpa.RGPANoise`) scales the
    noise by its gradient map. ``ctx.extras["eps"]`` holds the injected (weighted) noise.
    """

    name = "noised"  # the config choice, in messages

    def __init__(self, t_min: int = 50, t_max: int = 250, timestep: int = 100,
                 sweep: list[int] | None = None) -> None:
        super().__init__()
        if not 0 <= t_min <= t_max:
            raise ValueError(f"need 0 <= noise.t_min <= noise.t_max, got {t_min}, {t_max}")
        self.t_min, self.t_max, self.timestep = int(t_min), int(t_max), int(timestep)
        self.sweep = [int(v) for v in (sweep if sweep is not None else [50, 100, 200, 300, 400])]

    def attach(self, parameterisation) -> None:
        super().attach(parameterisation)
        for key, value in (("t_max", self.t_max), ("timestep", self.timestep), *(("sweep", v) for v in self.sweep)):
            if not 0 <= value < self.num_train_timesteps:
                raise ValueError(f"noise.{key}={value} outside [0, {self.num_train_timesteps})")

    # ------------------------------------------------------------------ knob
    def parse_knob(self, knob: Any) -> int:
        return self.timestep if knob is None else parse_timestep(knob, self.num_train_timesteps, f"noise={self.name}")

    def knob_values(self) -> list:
        return list(self.sweep)

    def knob_help(self) -> str:
        return (f"the timestep t of the injected noise, an integer in [0, {self.num_train_timesteps or 1000}); "
                f"default {self.timestep}, trained on [{self.t_min}, {self.t_max}]; larger t = more generated "
                "detail (realism), smaller = closer to the input (fidelity)")

    # ------------------------------------------------------------------ pass
    def noise_weight(self, ctx: NoiseContext) -> torch.Tensor | None:
        """Per-latent-pixel scale of the injected noise, broadcastable to z_L (None: 1 everywhere)."""
        return None

    def timesteps(self, ctx: NoiseContext) -> torch.Tensor:
        z = ctx.z_lq
        if ctx.knob is None and ctx.training:
            return torch.randint(self.t_min, self.t_max + 1, (z.shape[0],), generator=ctx.generator,
                                 device=z.device, dtype=torch.long)
        return self.full_timesteps(self.parse_knob(ctx.knob), z)

    def denoiser_input(self, ctx: NoiseContext, t: torch.Tensor) -> torch.Tensor:
        z = ctx.z_lq
        weight = self.noise_weight(ctx)
        eps = ctx.eps if ctx.eps is not None else torch.randn(z.shape, generator=ctx.generator, device=z.device,
                                                               dtype=z.dtype)
        if weight is not None:
            eps = weight * eps
        ctx.extras["eps"] = eps  # to_x0 needs the injected noise
        return self.parameterisation.noised(z, eps, t)

    def to_x0(self, ctx: NoiseContext, t: torch.Tensor, z_in: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self.parameterisation.to_x0_from(ctx.z_lq, ctx.extras["eps"], pred, t)
