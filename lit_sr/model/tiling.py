"""Overlapping tiles blended with a smooth window: bounded memory for big images, no visible seams.

One helper serves the three places that tile — the VAE encoder (pixels → latent), the UNet
(latent → latent) and the VAE decoder (latent → pixels). Positions are counted in *units* of a
grid both sides share (one latent pixel = ``f`` image pixels), so the tiles of the input and of
the output line up exactly. Each tile's output is weighted by a separable raised-cosine ramp over
the overlap (flat inside, never exactly 0) and accumulated into one output buffer with the
weights, then divided: memory is the output plus one tile's activations, whatever the image size.

Networks with GroupNorm (the VAE) would normalise each tile by its own content, and neighbouring
tiles would differ in colour; :func:`recorded_group_norms` / :func:`fixed_group_norms` let every
tile use the statistics of one pass over a copy of the whole image instead, downscaled only when it
is larger than the statistics size (``vae_tile_stats``, 1024 px: an image the untiled path
handles anyway). Statistics from a copy downscaled to the tile's size lose the image's fine
detail — its variance — and every tile is then normalised too strongly: on the tiny VAE the tiled
decode agreed with the untiled one to 24.7 dB PSNR that way and 35.3 dB with the whole image's
statistics (192×256, 64-px tiles; ``tests/test_tiling_quality.py``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``size`` with tiles of ``tile`` every ``stride`` (the last flush with the end)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def blend_window(h: int, w: int, overlap: int, device, dtype) -> torch.Tensor:
    """(1, 1, h, w) separable raised-cosine ramps over ``overlap`` at each border; 1 inside."""

    def ramp(n: int) -> torch.Tensor:
        v = torch.ones(n, dtype=torch.float64)
        k = min(overlap, n // 2)
        if k > 0:
            r = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(k, dtype=torch.float64) + 0.5) / k)
            v[:k] = r
            v[n - k:] = r.flip(0)
        return v

    return (ramp(h)[:, None] * ramp(w)[None, :]).to(device, dtype)[None, None]


TileProgress = Callable[[str, int, int], None]
_progress: ContextVar[TileProgress | None] = ContextVar("lit_sr_tile_progress", default=None)


@contextmanager
def tile_progress(callback: TileProgress) -> Iterator[None]:
    """Call ``callback(label, done, total)`` after each tile of every tiled pass inside the block
    (only for passes of more than one tile): what a progress bar per tile needs."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def tiled(fn: Callable[[slice, slice], torch.Tensor], size: tuple[int, int], tile: int, overlap: int,
          out_per_unit: int = 1, label: str = "tiles") -> torch.Tensor:
    """Blend ``fn`` over overlapping tiles of a ``size`` = (H, W) grid (in units).

    ``fn(ys, xs)`` returns the output of the tile ``[ys, xs]`` (unit slices), at ``out_per_unit``
    output pixels per unit: shape (B, C, len(ys)·k, len(xs)·k). Tiles are ``tile`` units with
    ``overlap`` units shared between neighbours. ``label`` names the pass for :func:`tile_progress`.
    """
    h, w = size
    overlap = max(0, min(overlap, tile // 2))
    stride = max(tile - overlap, 1)
    k = int(out_per_unit)
    out = weight = None
    grid = [(y, x) for y in tile_starts(h, tile, stride) for x in tile_starts(w, tile, stride)]
    report = _progress.get() if len(grid) > 1 else None
    for done, (y, x) in enumerate(grid, 1):
        ys, xs = slice(y, min(y + tile, h)), slice(x, min(x + tile, w))
        part = fn(ys, xs)
        if out is None:
            out = part.new_zeros(part.shape[0], part.shape[1], h * k, w * k)
            weight = part.new_zeros(1, 1, h * k, w * k)
        win = blend_window(part.shape[-2], part.shape[-1], overlap * k, part.device, part.dtype)
        region = (..., slice(ys.start * k, ys.stop * k), slice(xs.start * k, xs.stop * k))
        out[region] += part * win
        weight[region] += win
        if report is not None:
            report(label, done, len(grid))
    return out / weight


# ------------------------------------------------------------------------------ shared normalisation

@contextmanager
def recorded_group_norms(module: nn.Module) -> Iterator[dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]]:
    """Record each GroupNorm's per-(sample, group) mean and variance during the forward in the block."""
    stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(gn: nn.GroupNorm, args, _out) -> None:
        x = args[0].float().reshape(args[0].shape[0], gn.num_groups, -1)
        stats[gn] = (x.mean(-1), x.var(-1, unbiased=False))

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.GroupNorm)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextmanager
def fixed_group_norms(stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """GroupNorm layers normalise with the given statistics instead of each input's own.

    Tiles of one image then share one normalisation: without it every tile of a VAE normalises
    by its own content and neighbouring tiles come out in visibly different colours.
    """

    def fixed(gn: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor):
        def forward(x: torch.Tensor) -> torch.Tensor:
            b, c = x.shape[:2]
            g = x.float().reshape(b, gn.num_groups, -1)
            y = (g - mean[..., None]) / torch.sqrt(var[..., None] + gn.eps)
            y = y.reshape(x.shape)
            if gn.affine:
                shape = (1, c) + (1,) * (x.ndim - 2)
                y = y * gn.weight.float().reshape(shape) + gn.bias.float().reshape(shape)
            return y.to(x.dtype)

        return forward

    for gn, (mean, var) in stats.items():
        gn.forward = fixed(gn, mean, var)
    try:
        yield
    finally:
        for gn in stats:
            del gn.forward  # back to the class's forward


def downscaled(x: torch.Tensor, longest: int) -> torch.Tensor:
    """``x`` area-downscaled so its longest side is at most ``longest`` (statistics pass input)."""
    h, w = x.shape[-2:]
    s = min(1.0, longest / max(h, w))
    if s == 1.0:
        return x
    return F.interpolate(x.float(), size=(max(1, round(h * s)), max(1, round(w * s))), mode="area").to(x.dtype)
