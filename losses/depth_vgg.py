"""Depth-weighted VGG feature loss (IFCSR).

Feature distances at L VGG16 layers (ordered by depth, l = 1 … L) are summed with weights

    fidelity: w_l = k^(L−l)     (shallow, pixel-like layers dominate)
    realism:  w_l = k^(l−1)     (deep, semantic layers dominate)

normalised by Σ w_l; IFCSR uses k = 7. The fidelity network is trained with the first, the
realism network (on the γ-blend of both endpoints) with the second.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch

from lit_sr.model.vgg import NUM_LAYERS, VGG16_LAYERS, VGG16Features, load_vgg16_weights
from losses.base import ImageLoss

log = logging.getLogger(__name__)
_warned_random = False

# torchvision's ImageNet normalisation, which the VGG16 weights expect on [0, 1] images.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
DEFAULT_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def depth_weights(num_layers: int, k: float, mode: Literal["fidelity", "realism"]) -> torch.Tensor:
    """(L,) float64 weights k^(L−l) (fidelity) or k^(l−1) (realism), l = 1 … L, summing to 1."""
    if num_layers < 1:
        raise ValueError("need at least one layer")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    l = torch.arange(1, num_layers + 1, dtype=torch.float64)
    if mode == "fidelity":
        w = float(k) ** (num_layers - l)
    elif mode == "realism":
        w = float(k) ** (l - 1)
    else:
        raise ValueError(f"mode must be 'fidelity' or 'realism', got {mode!r}")
    return w / w.sum()


def _tap_index(layer: str | int) -> int:
    idx = VGG16_LAYERS.get(layer) if isinstance(layer, str) else layer
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < NUM_LAYERS:
        raise ValueError(f"unknown VGG16 layer {layer!r}: use a name like 'relu3_3' or an index 0..{NUM_LAYERS - 1}")
    return idx


def _unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + eps)


class DepthVGGLoss(ImageLoss):
    """Σ_l w_l · d(φ_l(sr), φ_l(hq)) over VGG16 layers with IFCSR's depth weights.

    Args:
        mode: ``fidelity`` (weights fall with depth) or ``realism`` (weights grow with depth).
        k: base of the geometric weights (IFCSR: 7).
        layers: VGG16 taps by name or torchvision index (sorted by depth internally).
        distance: ``l1`` / ``l2`` (mean absolute / squared feature difference) or ``lpips``
            (features unit-normalised over channels, squared difference summed over channels,
            spatial mean — LPIPS without its learned heads).
        vgg_weights: torchvision ImageNet VGG16 file; without it the network is random (warned once).
    """

    def __init__(
        self,
        weight: float = 1.0,
        mode: Literal["fidelity", "realism"] = "fidelity",
        k: float = 7.0,
        layers: Sequence[str | int] = DEFAULT_LAYERS,
        distance: Literal["l1", "l2", "lpips"] = "l1",
        vgg_weights: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight)
        if distance not in ("l1", "l2", "lpips"):
            raise ValueError(f"distance must be 'l1', 'l2' or 'lpips', got {distance!r}")
        taps = sorted({_tap_index(t) for t in layers})
        if not taps:
            raise ValueError("layers must name at least one VGG16 layer")
        self.mode, self.k, self.metric = mode, float(k), distance
        self.taps = tuple(taps)
        self.register_buffer("layer_weights", depth_weights(len(taps), self.k, mode).float(), persistent=False)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.vgg = VGG16Features(pooling="max", last_layer=max(taps), seed=seed)
        if vgg_weights is not None:
            load_vgg16_weights(self.vgg, vgg_weights)
        else:
            _warn_random()
        self.vgg.requires_grad_(False)  # VGG16 has no dropout or batch norm: its mode never matters

    def _layer_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.metric == "l1":
            return (a - b).abs().mean()
        if self.metric == "l2":
            return (a - b).square().mean()
        return (_unit_normalize(a) - _unit_normalize(b)).square().sum(dim=1).mean()

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"DepthVGGLoss expects two (B, 3, H, W) batches of equal shape, "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        dtype = self.mean.dtype
        both = (torch.cat([pred, target.detach()]).to(dtype) - self.mean) / self.std
        b = pred.shape[0]
        total = both.new_zeros(())
        for w, feat in zip(self.layer_weights, self.vgg(both, self.taps)):
            total = total + w * self._layer_distance(feat[:b], feat[b:])
        return total

    def extra_repr(self) -> str:
        return f"mode={self.mode}, k={self.k}, taps={self.taps}, distance={self.metric}"


def _warn_random() -> None:
    global _warned_random
    if not _warned_random:
        _warned_random = True
        log.warning("depth_vgg runs on a random VGG16 (vgg_weights not given): the loss trains, but is not the "
                    "ImageNet-feature loss of the paper; pass vgg_weights=/path/vgg16-397923af.pth")

