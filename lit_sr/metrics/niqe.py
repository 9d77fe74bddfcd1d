"""NIQE, the "completely blind" natural image quality evaluator (Mittal, Soundararajan & Bovik, 2013).

Classical and weight-free: natural-scene statistics of 96x96 patches are fitted with a
multivariate Gaussian and compared with one fitted on pristine images. The pristine model
(``lit_sr/data/niqe_pris_params.npz``: ``mu_pris_param`` (1, 36), ``cov_pris_param`` (36, 36),
``gaussian_window`` (7, 7)) is the one of the authors' MATLAB release, taken from the basicsr 1.4.2
source distribution on PyPI (``basicsr/metrics/niqe_pris_params.npz``).

The protocol is BasicSR's ``calculate_niqe`` (which reproduces the MATLAB code): BT.601 Y in
[0, 255] rounded to integers, MSCN coefficients with the 7x7 Gaussian window (sigma 7/6, edge
replication), per patch an AGGD/GGD fit of the coefficients and of their products with the four
neighbours (18 numbers), the same on a MATLAB-bicubic half-size image (36 in all), then
``sqrt((mu_p - mu_d)ᵀ pinv((C_p + C_d)/2) (mu_p - mu_d))``. Lower is better.

Everything runs in float64, as MATLAB and pyiqa do; BasicSR's numpy code filters in float32,
which moves images with flat areas by up to ~0.04 (see ``docs/metrics.md``).
"""
from __future__ import annotations

import os
from importlib import resources
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lit_sr.errors import WeightsError
from lit_sr.metrics.base import PerImageMetric
from lit_sr.metrics.color import crop_border, rgb_to_luma, rgb_to_y
from lit_sr.metrics.imresize import imresize

BLOCK = 96
# Neighbour directions of the paired products (right, down, down-right, down-left); the shifts
# wrap around inside a patch, as MATLAB's circshift does in the reference code.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def default_params_path() -> str:
    return str(resources.files("lit_sr").joinpath("data", "niqe_pris_params.npz"))


def load_pristine_params(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """``mu`` (36,), ``cov`` (36, 36) and ``window`` (7, 7) as float64 tensors."""
    path = os.fspath(path) if path is not None else default_params_path()
    if not os.path.isfile(path):
        raise WeightsError(f"NIQE pristine parameter file not found: {path}")
    try:
        with np.load(path) as npz:
            mu, cov, win = npz["mu_pris_param"], npz["cov_pris_param"], npz["gaussian_window"]
    except Exception as exc:
        raise WeightsError(f"cannot read NIQE parameters {path}: {type(exc).__name__}: {exc}") from None
    if mu.size != 36 or cov.shape != (36, 36) or win.shape != (7, 7):
        raise WeightsError(f"{path}: expected mu (1, 36), cov (36, 36), window (7, 7)")
    as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    return {"mu": as_t(mu).reshape(36), "cov": as_t(cov), "window": as_t(win)}


def _mscn(img: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients of a (H, W) image (Eq. 1; C = 1)."""
    pad = window.shape[-1] // 2
    window = window.to(img)
    x = F.pad(torch.stack([img, img.square()])[:, None], (pad, pad, pad, pad), mode="replicate")
    # A full 2-D filter, as the reference does: in flat regions img - mu is ~1e-14 either side of
    # zero and its sign decides which side of the AGGD fit it joins, so even a separable
    # (mathematically equal) filter moves NIQE of images with flat areas by ~1e-2.
    stats = F.conv2d(x, window[None, None])
    mu, second = stats[0, 0], stats[1, 0]
    sigma = (second - mu.square()).abs().sqrt()
    return (img - mu) / (sigma + 1)


class _GammaGrid:
    """Moment-matching table of the (A)GGD shape fit: r(a) = Γ(2/a)² / (Γ(1/a) Γ(3/a))."""

    def __init__(self, device: torch.device) -> None:
        # 0.2, 0.201, ..., 10.0 — the MATLAB grid; computed as start + i*step like np.arange.
        self.alpha = 0.2 + 0.001 * torch.arange(9801, dtype=torch.float64, device=device)
        inv = 1 / self.alpha
        self.ratio = torch.exp(2 * torch.lgamma(2 * inv) - torch.lgamma(inv) - torch.lgamma(3 * inv))


def _aggd(x: torch.Tensor, grid: _GammaGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row AGGD fit of ``x`` (N, n): shape alpha, left and right scales (Eq. 7)."""
    neg, pos = x < 0, x > 0
    sq = x.square()
    left_std = ((sq * neg).sum(1) / neg.sum(1)).sqrt()  # NaN if a patch has no negatives: MATLAB too
    right_std = ((sq * pos).sum(1) / pos.sum(1)).sqrt()
    gammahat = left_std / right_std
    rhat = x.abs().mean(1).square() / sq.mean(1)
    rhatnorm = rhat * (gammahat.pow(3) + 1) * (gammahat + 1) / (gammahat.square() + 1).square()
    err = (grid.ratio[None, :] - rhatnorm[:, None]).square()
    # A NaN fit picks the first grid entry, as numpy's/MATLAB's argmin over NaNs does.
    pick = torch.where(rhatnorm.isnan(), torch.zeros_like(rhatnorm, dtype=torch.long), err.argmin(1))
    alpha = grid.alpha[pick]
    scale = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left_std * scale, right_std * scale


def _patch_features(blocks: torch.Tensor, grid: _GammaGrid) -> torch.Tensor:
    """The 18 NIQE features of each MSCN patch in ``blocks`` (N, h, w)."""
    flat = blocks.reshape(blocks.shape[0], -1)
    alpha, bl, br = _aggd(flat, grid)
    feats = [alpha, (bl + br) / 2]
    for shift in _SHIFTS:
        prod = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        a, l, r = _aggd(prod.reshape(blocks.shape[0], -1), grid)
        mean = (r - l) * torch.exp(torch.lgamma(2 / a) - torch.lgamma(1 / a))  # Eq. 8
        feats += [a, mean, l, r]
    return torch.stack(feats, dim=1)


def size_problem(square: int | None) -> str | None:
    """Why NIQE cannot score ``square``×``square`` images (None: it can, or the size is unknown)."""
    if square is not None and (square // BLOCK) ** 2 < 2:
        return (f"NIQE needs images of at least {BLOCK}x{2 * BLOCK} (two {BLOCK}x{BLOCK} patches), and validation "
                f"crops are {square}x{square}: set data.val_crop={2 * BLOCK} (or null: whole images)")
    return None


def niqe_y(y: torch.Tensor, params: dict[str, torch.Tensor], block: int = BLOCK) -> torch.Tensor:
    """NIQE of one luminance image ``y`` (H, W) in [0, 255]; returns a float64 scalar."""
    if y.ndim != 2:
        raise ValueError(f"niqe_y expects a (H, W) luminance image, got shape {tuple(y.shape)}")
    y = y.to(torch.float64)
    nh, nw = y.shape[0] // block, y.shape[1] // block
    if nh * nw < 2:
        raise ValueError(f"NIQE needs at least two {block}x{block} patches, got a {y.shape[0]}x{y.shape[1]} image")
    img = y[: nh * block, : nw * block]
    grid = _GammaGrid(y.device)
    window = params["window"].to(y.device)
    feats = []
    for scale in (1, 2):
        mscn = _mscn(img, window)
        b = block // scale
        blocks = mscn.reshape(nh, b, nw, b).permute(0, 2, 1, 3).reshape(nh * nw, b, b)
        feats.append(_patch_features(blocks, grid))
        if scale == 1:
            img = imresize(img / 255.0, 0.5) * 255.0
    dist = torch.cat(feats, dim=1)  # (patches, 36)
    mu_d = dist.nanmean(0)
    finite = dist[~dist.isnan().any(1)]
    cov_d = torch.cov(finite.T)  # unbiased, as nancov in the reference
    mu_p, cov_p = params["mu"].to(y.device), params["cov"].to(y.device)
    diff = mu_p - mu_d
    return (diff @ torch.linalg.pinv((cov_p + cov_d) / 2) @ diff).sqrt()


class NIQE(PerImageMetric):
    """No-reference NIQE (lower is better) on a rounded luminance channel.

    Args:
        crop_border: pixels dropped on each side before scoring (BasicSR's ``crop_border``).
        params_path: pristine model file; default: the shipped ``niqe_pris_params.npz``.
        luma: ``"ycbcr"`` — BT.601 studio-range Y, BasicSR's ``calculate_niqe(convert_to='y')``;
            ``"yiq"`` — full-range ``0.299R + 0.587G + 0.114B``, what pyiqa's ``niqe`` scores by
            default (and so most recent Real-ISR tables).
    """

    name = "niqe"
    label = "NIQE"
    full_reference = False
    higher_is_better = False

    def __init__(
        self, crop_border: int = 0, params_path: str | None = None, luma: Literal["ycbcr", "yiq"] = "ycbcr",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {crop_border}")
        if luma not in ("ycbcr", "yiq"):
            raise ValueError(f"luma must be 'ycbcr' or 'yiq', got {luma!r}")
        self.crop_border = int(crop_border)
        self.luma = luma
        for key, value in load_pristine_params(params_path).items():
            self.register_buffer(f"_pris_{key}", value, persistent=False)

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        params = {k: getattr(self, f"_pris_{k}") for k in ("mu", "cov", "window")}
        # Rounding to integer levels is part of the protocol (scores are of 8-bit images).
        to_luma = rgb_to_y if self.luma == "ycbcr" else rgb_to_luma
        y = (to_luma(sr.to(torch.float64)) * 255.0).round()
        y = crop_border(y, self.crop_border)
        return torch.stack([niqe_y(img[0], params) for img in y])


def niqe(
    img: torch.Tensor, crop_border: int = 0, params_path: str | None = None, luma: Literal["ycbcr", "yiq"] = "ycbcr"
) -> torch.Tensor:
    """Functional NIQE of a ``(B, 3, H, W)`` RGB batch in [0, 1]; returns ``(B,)``."""
    metric = NIQE(crop_border=crop_border, params_path=params_path, luma=luma).to(img.device)
    return metric.per_image(img.clamp(0, 1), None)

