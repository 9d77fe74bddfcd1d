"""Small VAE halves distilled from a trained model: a fast decoder and a fast encoder.

At SD size the VAE, not the denoiser, dominates a one-step pass (decoder ~2.5, encoder ~1.1 of
~4.4 TFLOP at 512²). These networks replace either half at inference after
``experiment=distill_vae`` taught them to reproduce the trained generator's own VAE:

* :class:`SmallDecoder` — normalised latent ẑ → image in [-1, 1] (the frozen decoder's image of
  the generator's ẑ);
* :class:`SmallEncoder` — image in [-1, 1] → normalised latent (the LoRA-adapted encoder's
  posterior mode, ``(μ − shift)·scale``).

Both work on the normalised latent the denoiser sees, so the backbone's ``scaling_factor`` /
``shift_factor`` are learnt away and any channel count (4 on SD-2.1, 16 on SD3) and factor (8 on
SD, 4 on the tiny CPU VAEs) works. The design follows the TAESD idea: plain 3×3 convolutions in
residual blocks, nearest-neighbour up-sampling / strided down-sampling, ReLU. ``width`` channels
at latent resolution, halved at every ×2 step down to ``min_width``; ``depth`` residual blocks per
resolution.

Each block starts with a GroupNorm (``norm_groups`` groups; 0: none). The full VAE's GroupNorms
make its image depend on statistics of the whole image, which a purely local network cannot follow:
on the tiny CPU VAE a student with them came 2.3 dB closer to the teacher's images (raw PSNR,
held-out photos, equal steps) than one without. Like the full VAE, a tiled pass then takes every
GroupNorm's statistics from one pass over the image (downscaled to at most ``stats`` pixels;
:mod:`lit_sr.model.tiling`), so tiles share one normalisation.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from lit_sr.model.tiling import downscaled, fixed_group_norms, recorded_group_norms, tiled
from lit_sr.typed import Positive


class _Block(nn.Module):
    """x + conv(relu(conv(norm(x)))), the second conv zero-initialised (a new block starts as the identity)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels) if groups else nn.Identity()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(self.norm(x))))


class SmallVAEPart(nn.Module):
    """What both halves share: the latent they work in, their architecture arguments (saved with the
    weights, so a file rebuilds its network) and the channel widths per resolution."""

    kind: ClassVar[str]

    def __init__(self, latent_channels: Positive = 4, factor: Positive = 8, width: Positive = 64,
                 depth: int = 1, min_width: Positive = 16, norm_groups: int = 8) -> None:
        super().__init__()
        levels = math.log2(factor)
        if not levels.is_integer() or factor < 1:
            raise ValueError(f"factor must be a power of two, got {factor}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.latent_channels, self.factor = int(latent_channels), int(factor)
        self.width, self.depth, self.min_width = int(width), int(depth), int(min(min_width, width))
        self.levels = int(levels)
        # Channels at latent resolution, then after each ×2 step (halved, not below min_width).
        self.widths = [max(self.width >> i, self.min_width) for i in range(self.levels + 1)]
        self.norm_groups = int(norm_groups)
        if self.norm_groups < 0 or (self.norm_groups and any(w % self.norm_groups for w in self.widths)):
            raise ValueError(f"norm_groups={norm_groups} must be 0 or divide every width {self.widths}")

    def arch(self) -> dict[str, int]:
        """The constructor arguments (stored with the weights)."""
        return {"latent_channels": self.latent_channels, "factor": self.factor, "width": self.width,
                "depth": self.depth, "min_width": self.min_width, "norm_groups": self.norm_groups}

    def blocks(self, channels: int) -> list[nn.Module]:
        return [_Block(channels, self.norm_groups) for _ in range(self.depth)]

    def run_tiled(self, fn, x: torch.Tensor, stats: int, tile: int, run) -> torch.Tensor:
        """``run()`` (a tiled pass) with every GroupNorm normalising by the statistics of ``fn`` on
        ``x`` downscaled to at most ``max(tile, stats)`` pixels — one normalisation for all tiles."""
        if not self.norm_groups:
            return run()
        with recorded_group_norms(self) as norms, torch.no_grad():
            fn(downscaled(x, max(tile, stats)))
        with fixed_group_norms(norms):
            return run()

    def check_latent(self, channels: int, factor: int) -> None:
        """Refuse to stand in for a VAE of another latent layout (one line)."""
        if (channels, factor) != (self.latent_channels, self.factor):
            raise ValueError(f"the distilled {self.kind} works on {self.latent_channels}-channel latents at ×{self.factor}, "
                             f"this model's VAE has {channels} channels at ×{factor}")


class SmallDecoder(SmallVAEPart):
    """Normalised latent → image in [-1, 1] (see the module docstring)."""

    kind = "decoder"

    def __init__(self, latent_channels: Positive = 4, factor: Positive = 8, width: Positive = 64,
                 depth: int = 1, min_width: Positive = 16, norm_groups: int = 8) -> None:
        super().__init__(latent_channels, factor, width, depth, min_width, norm_groups)
        w = self.widths
        layers: list[nn.Module] = [nn.Conv2d(self.latent_channels, w[0], 3, padding=1), nn.ReLU()]
        layers += self.blocks(w[0])
        for i in range(self.levels):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i], w[i + 1], 3, padding=1), nn.ReLU()]
            layers += self.blocks(w[i + 1])
        layers.append(nn.Conv2d(w[-1], 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def decode(self, z: torch.Tensor, tile: int | None = None, overlap: int = 128, stats: int = 1024) -> torch.Tensor:
        """Image in [-1, 1]; beyond ``tile`` output pixels over overlapping tiles (``overlap`` pixels)
        sharing the GroupNorm statistics of the whole latent (downscaled to ``stats`` output pixels)."""
        f = self.factor
        if tile is None or max(z.shape[-2:]) * f <= tile:
            return self(z).clamp(-1, 1)
        out = self.run_tiled(self, z, stats // f, tile // f, lambda: tiled(
            lambda ys, xs: self(z[..., ys, xs]), tuple(z.shape[-2:]), tile // f, overlap // f, out_per_unit=f,
            label="distilled decoder"))
        return out.clamp(-1, 1)


class SmallEncoder(SmallVAEPart):
    """Image in [-1, 1] → normalised latent (see the module docstring)."""

    kind = "encoder"

    def __init__(self, latent_channels: Positive = 4, factor: Positive = 8, width: Positive = 64,
                 depth: int = 1, min_width: Positive = 16, norm_groups: int = 8) -> None:
        super().__init__(latent_channels, factor, width, depth, min_width, norm_groups)
        w = self.widths[::-1]  # full resolution first
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], 3, padding=1), nn.ReLU()]
        layers += self.blocks(w[0])
        for i in range(self.levels):
            layers += [nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), nn.ReLU()]
            layers += self.blocks(w[i + 1])
        layers.append(nn.Conv2d(w[-1], self.latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def encode(self, x: torch.Tensor, tile: int | None = None, overlap: int = 128, stats: int = 1024) -> torch.Tensor:
        """Normalised latent; beyond ``tile`` input pixels over overlapping tiles (``overlap`` pixels)
        sharing the GroupNorm statistics of the whole image (downscaled to ``stats`` pixels)."""
        f = self.factor
        if tile is None or max(x.shape[-2:]) <= tile:
            return self(x)
        return self.run_tiled(self, x, stats, tile, lambda: tiled(
            lambda ys, xs: self(x[..., ys.start * f:ys.stop * f, xs.start * f:xs.stop * f]),
            (x.shape[-2] // f, x.shape[-1] // f), tile // f, overlap // f, label="distilled encoder"))


PARTS: dict[str, type[SmallVAEPart]] = {"decoder": SmallDecoder, "encoder": SmallEncoder}
