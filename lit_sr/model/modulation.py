"""LQ-guided feature modulation (LQFM, CODSR).

The VAE compresses the LQ image 8× before the denoiser sees it, losing detail the denoiser cannot
recover. LQFM feeds the *uncompressed* LQ straight to the denoiser's first features instead:

    x (upsampled LQ, [-1, 1]) ─PixelUnshuffle(f·p)→ 3·(f·p)² channels on the modulation grid
      ─SFT (two small conv branches)→ (γ, β), each with the modulation point's channels

and the denoiser applies ``h ← h·(1 + λ_t·γ) + λ_t·β`` at its modulation point — right after a
UNet's ``conv_in`` (p = 1: latent resolution, 320 channels on SD-2.1), or after an MM-DiT's patch
embedding (p = patch size: one position per patch token, 1536 channels on SD3.5-medium) — with
λ_t = 1/w_t = a_t/b_t from the noise strategy's parameterisation (see
:meth:`lit_sr.model.generator.OneStepSR.modulation_maps`). The last conv of each branch starts at
zero, so an untrained LQFM leaves the denoiser unchanged.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from lit_sr.model.facts import Checked


class Modulation(Checked, nn.Module, metaclass=abc.ABCMeta):
    """The interface of feature modulation at the denoiser's modulation point: an image → (γ, β) maps.

    ``attach(backbone)`` builds the layers once the backbone's sizes are known; ``forward(x, t)``
    returns (γ, β) on the modulation grid (latent / ``denoiser.patch``) with the point's channels;
    the denoiser applies ``h·(1 + λ_t·γ) + λ_t·β``.
    """

    @classmethod
    def requires(cls, node, facts) -> str | None:
        if facts.parameterisation == "flow" and facts.noise_fixed_timestep is not None and facts.noise_fixed_timestep >= 999:
            return (f"modulation=lqfm scales its maps by λ_t = (1−σ_t)/σ_t, which is 0 at the noise strategy's fixed "
                    f"t = {facts.noise_fixed_timestep} (σ = 1) on a flow-matching backbone, so it would never act: "
                    "use noise=rgpa or noise=ldg, or a smaller noise.timestep")
        return None


    @abc.abstractmethod
    def attach(self, backbone) -> None:
        """Build the layers for this backbone."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β) for ``x`` in [-1, 1] at timesteps ``t``."""


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class LQFM(Modulation):
    """Pixel-unshuffle + spatial feature transform producing (γ, β) for the denoiser's first features.

    The layers are built by :meth:`attach` (the generator calls it with the backbone), because
    their sizes follow the backbone: ``3·(f·p)²`` input channels for VAE factor ``f`` and patch
    ``p`` (192 on SD-2.1, 768 on SD3) and the modulation point's channels (320 on SD-2.1).
    """

    def __init__(self, hidden: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        if hidden is not None and hidden <= 0:
            raise ValueError(f"modulation.hidden must be > 0 or null, got {hidden}")
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"modulation.kernel_size must be odd and > 0, got {kernel_size}")
        self.hidden = hidden
        self.kernel_size = int(kernel_size)
        self.factor: int | None = None
        self.unshuffle: nn.Module | None = None
        self.scale: nn.Sequential | None = None
        self.shift: nn.Sequential | None = None

    def attach(self, backbone) -> None:
        """Build the layers for this backbone's VAE factor, patch size and modulation width."""
        denoiser = backbone.denoiser
        self.factor = int(backbone.vae_scale_factor) * int(denoiser.patch)
        out_ch = int(denoiser.modulation_channels)
        in_ch = 3 * self.factor ** 2
        hidden = int(self.hidden or out_ch)
        pad = self.kernel_size // 2
        self.unshuffle = nn.PixelUnshuffle(self.factor)

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_ch, hidden, self.kernel_size, padding=pad),
                nn.SiLU(),
                _zero(nn.Conv2d(hidden, out_ch, self.kernel_size, padding=pad)),
            )

        self.scale, self.shift = branch(), branch()
        dev = next(denoiser.parameters()).device
        self.to(dev)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β) on the modulation grid for ``x`` in [-1, 1]; ``t`` is unused (λ_t is applied by the generator)."""
        if self.unshuffle is None:
            raise RuntimeError("LQFM used before attach(backbone)")
        f = self.factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"LQFM input size {tuple(x.shape[-2:])} is not a multiple of the modulation grid's {f} pixels")
        cond = self.unshuffle(x)
        return self.scale(cond), self.shift(cond)
