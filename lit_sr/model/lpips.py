"""LPIPS v0.1 with the VGG16 trunk (Zhang et al., 2018), without torchvision or the lpips package.

The network both the LPIPS loss term (:mod:`losses.lpips`) and the LPIPS metric
(:mod:`lit_sr.metrics.lpips`) use; it lives in the model layer so neither imports the other.

The formula follows lpips' ``LPIPS(net='vgg', version='0.1')``: scaling layer on [-1, 1] input,
VGG16 activations at relu1_2 … relu5_3, unit-normalised over channels, squared difference,
non-negative 1x1 linear heads, spatial mean, summed over the five layers. Module and key names
(``lin{k}.model.1.weight``) match lpips' ``weights/v0.1/vgg.pth`` so that file loads as is.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from lit_sr.model.vgg import LPIPS_TAPS, VGG16Features, load_vgg16_weights, read_weights, weight_like

log = logging.getLogger(__name__)
_warned_uncalibrated = False

LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


class _LinHead(nn.Module):
    """lpips' ``NetLinLayer`` as the metric uses it: (no dropout) + 1x1 conv to one channel.

    lpips' module holds a Dropout at ``model.0`` that is only active in training mode; an
    Identity in its place keeps the key ``model.1.weight`` of ``vgg.pth`` and makes the distance
    the same in train and eval mode, so a parent module's mode never changes it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


def _unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # lpips adds eps to the norm (not under the sqrt); kept identical for matching values.
    return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Per-image LPIPS-VGG distance between image batches in [0, 1]; returns shape ``(B,)``.

    Args:
        vgg_weights: torchvision ImageNet VGG16 file (``vgg16-397923af.pth``).
        lpips_weights: lpips' linear heads (``lpips/weights/v0.1/vgg.pth``).
        seed: seed of the deterministic random init used for whatever is not loaded.

    Without both files the value is uncalibrated (a warning is logged once); it is still a
    deterministic, non-negative distance, which is what tests need.
    """

    def __init__(self, vgg_weights: str | None = None, lpips_weights: str | None = None, seed: int = 0) -> None:
        super().__init__()
        # Not persistent: constants of the formula, not state to checkpoint.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features(pooling="max", last_layer=max(LPIPS_TAPS), seed=seed)
        for k, ch in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{k}", _LinHead(ch))
        self._init_heads(seed)
        if vgg_weights is not None:
            load_vgg16_weights(self.net, vgg_weights)
        if lpips_weights is not None:
            self.load_heads(lpips_weights)
        if vgg_weights is None or lpips_weights is None:
            _warn_uncalibrated()
        self.requires_grad_(False)
        self.eval()

    @property
    def heads(self) -> list[nn.Conv2d]:
        return [getattr(self, f"lin{k}").model[1] for k in range(len(LPIPS_CHANNELS))]

    @torch.no_grad()
    def _init_heads(self, seed: int) -> None:
        # Trained lpips heads are non-negative (the distance must be >= 0); random ones are too.
        gen = torch.Generator().manual_seed(seed + 1)
        for head in self.heads:
            head.weight.copy_(torch.rand(head.weight.shape, generator=gen) / head.weight.shape[1] * 4)

    def load_heads(self, path: str | os.PathLike) -> None:
        """Load lpips' ``vgg.pth`` (keys ``lin{k}.model.1.weight``, shapes ``(1, C, 1, 1)``)."""
        state = read_weights(path, "LPIPS")
        for k, head in enumerate(self.heads):
            w = weight_like(state, f"lin{k}.model.1.weight", head.weight, path, "an lpips 'vgg' v0.1 weights file")
            with torch.no_grad():
                head.weight.copy_(w)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (B, 3, H, W) batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        b = x.shape[0]
        # Follow the weights' dtype (float64 images, bf16 outputs without autocast); autocast,
        # where active, still picks the conv precision.
        dtype = self.heads[0].weight.dtype
        both = torch.cat([x, y]).to(dtype) * 2 - 1  # our API is [0, 1]; lpips works on [-1, 1]
        both = (both - self.shift.to(both.dtype)) / self.scale.to(both.dtype)
        total = both.new_zeros(b)
        for feat, head in zip(self.net(both, LPIPS_TAPS), self.heads):
            f = _unit_normalize(feat)
            diff = (f[:b] - f[b:]).square()
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _warn_uncalibrated() -> None:
    global _warned_uncalibrated
    if not _warned_uncalibrated:
        _warned_uncalibrated = True
        log.warning(
            "LPIPS runs with random weights (vgg_weights and/or lpips_weights not given): "
            "its values are uncalibrated and not comparable with published LPIPS"
        )
