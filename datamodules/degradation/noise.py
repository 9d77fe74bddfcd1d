"""Additive Gaussian and Poisson (shot) noise, drawn from a per-sample seed.

The noise field of sample ``i`` depends only on its record entries (kind, level, gray, seed) and,
for Poisson noise, its own pixels, so applying a saved record reproduces it exactly and a
sample's noise does not depend on which other samples share its batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from datamodules.degradation.ragged import Ragged, map_samples

# ITU-R 601 luma weights as in torchvision's rgb_to_grayscale, which BasicSR's gray Poisson noise uses.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _generator(device: torch.device | str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def gaussian_noise(shape: Sequence[int], sigma: float, gray: bool, seed: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """N(0, (σ/255)²) noise of ``shape`` (C, h, w) drawn on ``device``; ``gray`` shares one field across
    channels. A seed gives the same field on every CPU; a GPU draws its own (same distribution)."""
    c, h, w = (int(s) for s in shape)
    gen = _generator(device, seed)
    noise = torch.randn((1 if gray else c, h, w), generator=gen, device=device)
    return (noise * (float(sigma) / 255.0)).expand(c, h, w)


def poisson_noise(img: torch.Tensor, scale: float, gray: bool, seed: int) -> torch.Tensor:
    """Shot noise of ``img`` (C, h, w) in [0, 1] at the image's own 8-bit level count, times ``scale``.

    As BasicSR: the image (or its luma, for gray noise) is rounded to 8 bits, its number of
    distinct levels n gives ``vals = 2^ceil(log2 n)``, and the noise is
    ``Poisson(img·vals)/vals - img``. Drawn on the image's device from the sample's own generator
    (a GPU batch stays on the GPU).
    """
    img = img.detach().float()
    if gray:
        wr, wg, wb = GRAY_WEIGHTS
        base = (wr * img[0] + wg * img[1] + wb * img[2])[None]
    else:
        base = img
    levels = torch.clamp((base * 255.0).round(), 0, 255)
    distinct = int(torch.bincount(levels.to(torch.int64).flatten(), minlength=256).count_nonzero())
    vals = float(1 << max(distinct - 1, 0).bit_length())  # 2^ceil(log2(distinct))
    quantised = levels / 255.0
    out = torch.poisson(quantised * vals, generator=_generator(img.device, seed)) / vals
    return ((out - quantised) * float(scale)).expand(img.shape)


def add_noise(
    x: Ragged, kinds: Sequence[str], levels: Sequence[float], gray: Sequence[bool], seeds: Sequence[int]
) -> Ragged:
    """Add per-sample ``gaussian`` (level = σ on the 0–255 scale) or ``poisson`` (level = scale) noise, clip to [0, 1].

    The noise of every sample is drawn from its own seed, so samples are processed one by one,
    in parallel across threads (:func:`map_samples`); each works on the sample's own region only
    (a padded canvas can be several times larger).
    """
    unknown = set(kinds) - {"gaussian", "poisson"}
    if unknown:
        raise ValueError(f"unknown noise kind(s) {sorted(unknown)} (expected 'gaussian' or 'poisson')")
    out = torch.empty_like(x.data)  # only each sample's region is written

    def noisy(i: int) -> None:  # writes sample i's own region only, so samples can run in parallel
        crop = x.crop(i)
        if kinds[i] == "gaussian":
            field = gaussian_noise(crop.shape, levels[i], gray[i], seeds[i], crop.device)
        else:
            field = poisson_noise(crop, levels[i], gray[i], seeds[i])
        h, w = x.sizes[i]
        out[i, :, :h, :w] = (crop + field.to(crop.device, crop.dtype)).clamp_(0.0, 1.0)

    map_samples(noisy, len(x))
    return Ragged(out, x.sizes)
