"""Tiled inference bounds memory: the peak follows the tile, not the image (measured, not assumed)."""
from __future__ import annotations

import torch

from lit_sr.config.build import build_generator
from lit_sr.model.tracing import PeakTracker


def _peak(g, lq: torch.Tensor) -> int:
    tracker = PeakTracker()
    with torch.no_grad(), tracker:
        g(lq)
    return tracker.peak


def test_tiled_peak_memory_follows_the_tile_while_the_untiled_one_grows_with_the_activations(make_cfg, tiny_bb):
    g = build_generator(make_cfg(), tiny_bb).eval()
    small, big = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 192, 192)  # 256² and 768² outputs: 9x the area
    added = (768 * 768 - 256 * 256) * 4  # bytes of one float32 value per added output pixel
    untiled = [_peak(g, x) for x in (small, big)]
    g.vae_tile, g.vae_tile_overlap, g.tile_latent, g.tile_overlap = 128, 32, 32, 8
    g.vae_tile_stats = 128  # the statistics pass at the tile's size too (its default, 1024 px, is an untiled pass)
    tiled = [_peak(g, x) for x in (small, big)]
    # Untiled, every VAE/UNet activation is image-sized: the peak grows by ~100 floats per pixel
    # (27 -> 244 MB here). Tiled, only the image-sized buffers grow — input, padded input, blend
    # accumulators and weights, output (~11 floats per pixel; 11.6 -> 34.6 MB) — one tile's
    # activations stay the same.
    assert (untiled[1] - untiled[0]) / added > 50, untiled
    assert (tiled[1] - tiled[0]) / added < 16, tiled
    assert tiled[1] < 0.2 * untiled[1], (tiled, untiled)
    # The statistics pass bounds the peak by vae_tile_stats, not by the image: at 768² it is an
    # untiled-sized pass when the statistics size covers the image (the default 1024 px).
    g.vae_tile_stats = 1024
    assert _peak(g, big) > 0.5 * untiled[1]
