"""DISTS: deep image structure and texture similarity (Ding, Ma, Wang & Simoncelli, 2020).

VGG16 with L2 pooling in place of max pooling; at the input and at relu1_2 … relu5_3 each channel
contributes a structure term (correlation of the feature maps) and a texture term (agreement of
their global means), weighted by the learned ``alpha``/``beta`` of the authors' ``weights.pt``
(``DISTS_pytorch`` package: two tensors of shape ``(1, 1475, 1, 1)``, 1475 = 3+64+128+256+512+512).
The VGG convolutions are torchvision's ImageNet weights, as in the reference code.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lit_sr.metrics.base import FrozenNetMetric, require_weights, warn_once
from lit_sr.model.vgg import LPIPS_TAPS, VGG16Features, load_vgg16_weights, read_weights, weight_like

DISTS_CHANNELS: tuple[int, ...] = (3, 64, 128, 256, 512, 512)
_C1 = _C2 = 1e-6


class DISTS(nn.Module):
    """Per-image DISTS between batches in [0, 1]; returns ``(B,)`` (0 for identical images).

    Args:
        vgg_weights: torchvision ImageNet VGG16 file (``vgg16-397923af.pth``).
        dists_weights: the DISTS ``weights.pt`` (``alpha`` and ``beta``).
        seed: seed of the random init used for whatever is not loaded (VGG: torchvision's init;
            alpha/beta: N(0.1, 0.01) as the reference code initialises them before training).
    """

    def __init__(self, vgg_weights: str | None = None, dists_weights: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features(pooling="l2", last_layer=max(LPIPS_TAPS), seed=seed)
        gen = torch.Generator().manual_seed(seed + 1)
        n = sum(DISTS_CHANNELS)
        self.alpha = nn.Parameter(0.1 + 0.01 * torch.randn(1, n, 1, 1, generator=gen))
        self.beta = nn.Parameter(0.1 + 0.01 * torch.randn(1, n, 1, 1, generator=gen))
        if vgg_weights is not None:
            load_vgg16_weights(self.net, vgg_weights)
        if dists_weights is not None:
            self.load_alpha_beta(dists_weights)
        if vgg_weights is None or dists_weights is None:
            warn_once(
                "DISTS runs with random weights (vgg_weights and/or dists_weights not given): values are uncalibrated"
            )
        self.requires_grad_(False)
        self.eval()

    def load_alpha_beta(self, path: str | os.PathLike) -> None:
        """Load ``alpha`` and ``beta`` from DISTS' ``weights.pt``."""
        state = read_weights(path, "DISTS")
        for key in ("alpha", "beta"):
            own = getattr(self, key)
            t = weight_like(state, key, own, path, "a DISTS weights.pt file")
            with torch.no_grad():
                own.copy_(t)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return [x, *self.net(h, LPIPS_TAPS)]  # the raw image is the first "layer"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"DISTS expects two (B, 3, H, W) batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        b = x.shape[0]
        feats = self.features(torch.cat([x, y]).to(self.alpha.dtype))  # follow the weights' dtype
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        similarity = feats[0].new_zeros(b)
        for f, a, bt in zip(feats, alphas, betas):
            fx, fy = f[:b], f[b:]
            mx, my = fx.mean(dim=(2, 3), keepdim=True), fy.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mx * my + _C1) / (mx.square() + my.square() + _C1)
            vx = (fx - mx).square().mean(dim=(2, 3), keepdim=True)
            vy = (fy - my).square().mean(dim=(2, 3), keepdim=True)
            cov = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            structure = (2 * cov + _C2) / (vx + vy + _C2)
            similarity = similarity + (a.to(f.dtype) * texture + bt.to(f.dtype) * structure).sum(dim=(1, 2, 3))
        return 1 - similarity


class DISTSMetric(FrozenNetMetric):
    """Mean DISTS between SR and HQ (lower is better).

    Args:
        vgg_weights: torchvision ImageNet VGG16 file (``vgg16-397923af.pth``).
        dists_weights: DISTS' ``weights.pt`` (from the ``DISTS_pytorch`` package).
        allow_random: without both files, score with seeded random weights instead of raising
            :class:`MetricUnavailable`.
    """

    name = "dists"
    label = "DISTS"
    full_reference = True
    higher_is_better = False

    def __init__(
        self, vgg_weights: str | None = None, dists_weights: str | None = None, allow_random: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.calibrated = require_weights("DISTS", allow_random, vgg_weights=vgg_weights, dists_weights=dists_weights)
        self.net = DISTS(vgg_weights=vgg_weights, dists_weights=dists_weights)

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        assert hq is not None
        return self.net(sr, hq)
