"""The latent autoencoder of a backbone: images ↔ the latents the denoiser works in.

Wraps a diffusers ``AutoencoderKL`` (4 latent channels on SD-2.1, 16 with a shift factor on
SD3/SD3.5/FLUX) and owns what every family shares:

* the latent normalisation ``z = (μ − shift)·scale`` and its inverse (``scaling_factor`` and
  ``shift_factor`` of the VAE config; shift 0 where the config has none);
* the spatial factor (×8 for SD, ×4 for the tiny CPU VAEs) and the channel count;
* tiling: beyond ``tile`` image pixels the encoder and decoder run over overlapping tiles whose
  GroupNorm layers share the statistics of one pass over the whole image, downscaled to at most
  ``stats`` pixels (no seams, bounded memory; :mod:`lit_sr.model.tiling`).

The wrapped network is ``self.net`` (LoRA adapters are added to its encoder).
"""
from __future__ import annotations

import torch
from torch import nn

from lit_sr.model.tiling import downscaled, fixed_group_norms, recorded_group_norms, tiled


class Autoencoder(nn.Module):
    """A frozen KL autoencoder with its latent normalisation and tiling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        cfg = net.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.channels = int(cfg.latent_channels)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.net.decoder

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift_factor) * self.scaling_factor

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor + self.shift_factor

    def posterior(self, x: torch.Tensor, tile: int | None = None, overlap: int = 128, stats: int = 1024):
        """The encoder's latent distribution of an image in [-1, 1] (tiled beyond ``tile`` pixels)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        f = self.factor
        if tile is None or max(x.shape[-2:]) <= tile:
            return self.net.encode(x).latent_dist
        # The posterior's moments, blended tile by tile at latent resolution, one shared normalisation.
        with recorded_group_norms(self.net.encoder) as norms, torch.no_grad():
            self.net.encode(downscaled(x, max(tile, stats)))
        with fixed_group_norms(norms):
            moments = tiled(lambda ys, xs: self.net.encode(x[..., ys.start * f:ys.stop * f, xs.start * f:xs.stop * f])
                            .latent_dist.parameters, (x.shape[-2] // f, x.shape[-1] // f), tile // f, overlap // f,
                            label="VAE encoder")
        return DiagonalGaussianDistribution(moments)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               tile: int | None = None, overlap: int = 128, stats: int = 1024) -> torch.Tensor:
        """The normalised latent of an image in [-1, 1]: the posterior's mode, or a sample."""
        dist = self.posterior(x, tile, overlap, stats)
        z = dist.sample(generator=generator) if sample else dist.mode()
        return self.normalise(z)

    def decode(self, z: torch.Tensor, tile: int | None = None, overlap: int = 128, stats: int = 1024) -> torch.Tensor:
        """An image in [-1, 1] from a normalised latent (tiled beyond ``tile`` output pixels)."""
        z = self.denormalise(z)
        f = self.factor
        if tile is None or max(z.shape[-2:]) * f <= tile:
            return self.net.decode(z).sample.clamp(-1, 1)
        with recorded_group_norms(self.net.decoder) as norms, torch.no_grad():
            self.net.decode(downscaled(z, max(tile, stats) // f))
        with fixed_group_norms(norms):
            out = tiled(lambda ys, xs: self.net.decode(z[..., ys, xs]).sample, tuple(z.shape[-2:]), tile // f,
                        overlap // f, out_per_unit=f, label="VAE decoder")
        return out.clamp(-1, 1)

    def enable_gradient_checkpointing(self) -> None:
        self.net.enable_gradient_checkpointing()
