"""Tiled VAE passes against the untiled ones: agreement (PSNR), seams (error along tile overlaps vs
elsewhere), and why every tile must share the whole image's GroupNorm statistics."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import lit_sr.model.autoencoder as autoencoder
from lit_sr.model.tiling import tile_starts
from lit_sr.photos import photo_array

TILE, OVERLAP = 64, 32


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    img = torch.from_numpy(photo_array("astronaut")).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(img, size=(192, 256), mode="area")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a - b).square().mean()))  # images in [-1, 1]


def _seam_ratio(err: torch.Tensor, factor: int) -> float:
    """Mean error inside the tiles' overlap bands over the mean error elsewhere (1: no seams)."""
    h, w = err.shape
    band = torch.zeros(h, w, dtype=torch.bool)
    stride = (TILE - OVERLAP) // factor
    for start in tile_starts(h // factor, TILE // factor, stride)[1:]:
        band[start * factor: start * factor + OVERLAP] = True
    for start in tile_starts(w // factor, TILE // factor, stride)[1:]:
        band[:, start * factor: start * factor + OVERLAP] = True
    return float(err[band].mean() / err[~band].mean())


def _compare(ae, x: torch.Tensor, monkeypatch, shared: bool = True, stats: int = 1024) -> tuple[float, float]:
    """(PSNR of the tiled decode against the untiled one, seam ratio) for one latent."""
    with monkeypatch.context() as m:
        if not shared:  # every tile normalised by its own content
            m.setattr(autoencoder, "fixed_group_norms", lambda norms: contextlib.nullcontext())
        with torch.no_grad():
            z = ae.encode(x)
            y = ae.decode(z)
            y_tiled = ae.decode(z, tile=TILE, overlap=OVERLAP, stats=stats)
            z_tiled = ae.encode(x, tile=TILE, overlap=OVERLAP, stats=stats)
    assert z_tiled.shape == z.shape and y_tiled.shape == y.shape
    return _psnr(y_tiled, y), _seam_ratio((y_tiled - y).abs().mean(1)[0], ae.factor)


def test_tiled_trained_tiny_vae_matches_untiled_without_seams(tiny_bb, photo, monkeypatch):
    ae = tiny_bb.autoencoder
    shared, seams = _compare(ae, photo, monkeypatch)
    own, _ = _compare(ae, photo, monkeypatch, shared=False)
    from_tile, _ = _compare(ae, photo, monkeypatch, stats=TILE)  # statistics of a copy the size of one tile
    assert shared > 33.0 and seams < 1.3  # measured 35.3 dB, 0.78
    assert shared > own + 8.0  # per-tile statistics: ~23 dB, visible colour differences between tiles
    assert shared > from_tile + 5.0  # a tile-sized copy loses the image's detail: ~25 dB


def test_tiled_real_width_vae_shares_statistics(photo, monkeypatch):
    """SD-2.1's 8× VAE (random weights: only the agreement is meaningful, not the image)."""
    from diffusers import AutoencoderKL

    from lit_sr.model.random_backbone import SD21_VAE

    torch.manual_seed(0)
    ae = autoencoder.Autoencoder(AutoencoderKL(**SD21_VAE)).eval()
    shared, _ = _compare(ae, photo, monkeypatch)
    own, _ = _compare(ae, photo, monkeypatch, shared=False)
    assert shared > own + 1.0  # measured 18.4 vs 15.9 dB
