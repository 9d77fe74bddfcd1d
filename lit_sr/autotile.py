"""Automatic tiling and the output-size limit of inference: large photos that just work.

The untiled pass stops scaling with the image once its self-attention layers see too many
positions: the VAE's mid-block attends over every latent pixel and the UNet's attention blocks
over the latent at half or quarter resolution, so their cost grows with the *square* of the
latent pixel count while everything else grows linearly (``benchmarks/auto_tile.py`` measures
it; the README has the table). The latent pixel count of an output of H×W pixels is
(H/f)·(W/f), ``f`` the VAE's downscaling factor (4 for the tiny backbone, 8 for SD), so the
threshold is set in latent pixels: the same output is 4× fewer latent pixels on SD
(docs/inference.md says why the default suits SD too).

Above :data:`DEFAULT_AUTO_TILE` latent pixels (a setting: ``--auto-tile``) a pass runs over tiles
— denoiser tiles of ``T`` latent pixels and VAE tiles of ``T·f`` image pixels, ``T`` =
:data:`AUTO_TILE_SIDE` (64, SD's native latent size; the fastest tile measured on the tiny
backbone), or the largest multiple of 8 whose square fits a lower threshold — unless the user set
``tile_latent`` / ``vae_tile`` themselves (those win). Outputs above
:data:`DEFAULT_MAX_OUTPUT_PIXELS` are refused: the upsampled input and the output are whole-image
tensors whatever the tiling (about 220 bytes per output pixel in fp32, measured).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lit_sr.errors import LitSRError

log = logging.getLogger("lit_sr.autotile")

# Measured on the tiny default (benchmarks/auto_tile.py; docs/inference.md, README): untiled time
# per output pixel doubles from 3072 to 12288 latent pixels and keeps growing; 64-pixel tiles are
# slower than the untiled pass at 12288 latent pixels and faster from 27648 on. 128² latent pixels
# = a 512² output on the tiny backbone, 1024² on SD (untiled VAE: ~3.2 GB in fp32 there).
DEFAULT_AUTO_TILE = 128 * 128
AUTO_TILE_SIDE = 64
# 2**25 output pixels (an 8K UHD 7680x4320 output fits): ~7 GB of whole-image tensors at the
# ~220 bytes per output pixel measured (fp32, the default model with its wavelet colour fix).
DEFAULT_MAX_OUTPUT_PIXELS = 2**25


@dataclass(frozen=True)
class TilePlan:
    """The tiles one pass runs with: ``tile_latent`` for the denoiser, ``vae_tile`` (image pixels) for the VAE."""

    latent_pixels: int
    tile_latent: int
    vae_tile: int


def latent_pixels(generator: Any, height: int, width: int) -> int:
    """Latent pixels of an output of ``height`` × ``width`` pixels."""
    f = int(generator.vae_scale_factor)
    return math.ceil(height / f) * math.ceil(width / f)


def plan_tiles(generator: Any, height: int, width: int, max_latent_pixels: int | None) -> TilePlan | None:
    """The tiles for an output of ``height`` × ``width``, or None when the pass stays untiled.

    None also when the generator already has both tile sizes (the user's choice wins).
    """
    if max_latent_pixels is None or (generator.tile_latent is not None and generator.vae_tile is not None):
        return None
    n = latent_pixels(generator, height, width)
    if n <= max_latent_pixels:
        return None
    side = max(8, min(AUTO_TILE_SIDE, math.isqrt(max_latent_pixels) // 8 * 8))
    return TilePlan(n, side, side * int(generator.vae_scale_factor))


@contextmanager
def auto_tiled(generator: Any, height: int, width: int, max_latent_pixels: int | None) -> Iterator[TilePlan | None]:
    """Run the block with the generator tiled for an output of ``height`` × ``width`` when it is
    large (:func:`plan_tiles`); says so in one log line, and restores the settings afterwards."""
    plan = plan_tiles(generator, height, width, max_latent_pixels)
    if plan is None:
        yield None
        return
    saved = generator.tile_latent, generator.vae_tile
    generator.tile_latent = saved[0] if saved[0] is not None else plan.tile_latent
    generator.vae_tile = saved[1] if saved[1] is not None else plan.vae_tile
    log.info("auto-tiling the %dx%d output (%d latent pixels > %d): denoiser tiles of %d latent pixels, VAE tiles of "
             "%d px (--auto-tile N moves the threshold, --no-auto-tile turns it off)", width, height,
             plan.latent_pixels, max_latent_pixels, generator.tile_latent, generator.vae_tile)
    try:
        yield plan
    finally:
        generator.tile_latent, generator.vae_tile = saved


def check_output_size(height: int, width: int, max_output_pixels: int | None, what: str = "the input") -> None:
    """Refuse an output of more than ``max_output_pixels`` pixels with one line (:class:`LitSRError`)."""
    if max_output_pixels is not None and height * width > max_output_pixels:
        raise LitSRError(f"{what} would give a {width}x{height} output ({height * width / 1e6:.0f} MP), above the "
                         f"limit of {max_output_pixels / 1e6:.1f} MP (--max-output-pixels; about 220 bytes of memory "
                         "per output pixel)")
