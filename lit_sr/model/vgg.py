"""VGG16 convolutional trunk without torchvision.

Parameter names are torchvision's (``features.0.weight`` … ``features.28.bias``), so the standard
ImageNet file ``vgg16-397923af.pth`` loads with :func:`load_vgg16_weights`. LPIPS, DISTS and the
VGG feature losses all sit on top of this one module.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.errors import WeightsError

# Configuration "D" of Simonyan & Zisserman (VGG16): channel counts, "M" = 2x2 pooling.
_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


def _layer_names() -> dict[str, int]:
    """``conv1_1 → 0, relu1_1 → 1, …, pool5 → 30``: torchvision's ``features`` indices."""
    names: dict[str, int] = {}
    block, conv, idx = 1, 1, 0
    for item in _CFG:
        if item == "M":
            names[f"pool{block}"] = idx
            idx += 1
            block, conv = block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = idx
            names[f"relu{block}_{conv}"] = idx + 1
            idx += 2
            conv += 1
    return names


VGG16_LAYERS: dict[str, int] = _layer_names()
NUM_LAYERS = len(VGG16_LAYERS)  # 31 modules in torchvision's ``vgg16().features``
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the layers LPIPS and DISTS compare.
LPIPS_TAPS: tuple[int, ...] = tuple(VGG16_LAYERS[n] for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"))


class L2Pool2d(nn.Module):
    """DISTS' L2 pooling: ``sqrt(hann * x² + 1e-12)`` with stride 2.

    The 3x3 window is the inner part of a 5-tap Hanning window ([.5, 1, .5] ⊗ [.5, 1, .5],
    normalised), which anti-aliases where max-pooling would alias. The filter is a
    non-persistent buffer so the module adds no keys to the torchvision state dict.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        g = torch.outer(a, a)
        g = (g / g.sum()).to(torch.float32)
        self.register_buffer("filter", g.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.square(), self.filter.to(x.dtype), stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class VGG16Features(nn.Module):
    """The ``features`` part of VGG16, returning activations at chosen layer indices.

    Args:
        pooling: ``"max"`` (torchvision) or ``"l2"`` (DISTS' Hanning L2 pooling).
        last_layer: index (or name) of the deepest layer to build; deeper layers are neither
            built nor expected in weight files (LPIPS needs up to ``relu5_3`` = 29).
        seed: seed of the random initialisation used until real weights are loaded.
    """

    def __init__(
        self, pooling: Literal["max", "l2"] = "max", last_layer: int | str = NUM_LAYERS - 1, seed: int = 0
    ) -> None:
        super().__init__()
        if pooling not in ("max", "l2"):
            raise ValueError(f"pooling must be 'max' or 'l2', got {pooling!r}")
        self.pooling = pooling
        self.last_layer = self._index(last_layer)
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else L2Pool2d(in_ch))
            else:
                # Not in-place: a tapped activation must survive the next layer.
                layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.ReLU()]
                in_ch = int(item)
        self.features = nn.Sequential(*layers[: self.last_layer + 1])
        self.reset_parameters(seed)

    @staticmethod
    def _index(layer: int | str) -> int:
        idx = VGG16_LAYERS.get(layer) if isinstance(layer, str) else layer
        if idx is None or not 0 <= idx < NUM_LAYERS:
            raise ValueError(f"unknown VGG16 layer {layer!r}: use 0..{NUM_LAYERS - 1} or a name like 'relu3_3'")
        return idx

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """torchvision's init (Kaiming-normal fan-out, zero bias) from a private seeded generator."""
        gen = torch.Generator().manual_seed(seed)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, taps: Sequence[int | str] = LPIPS_TAPS) -> list[torch.Tensor]:
        """Activations at ``taps`` (in the order given); layers past the deepest tap are not run."""
        idx = [self._index(t) for t in taps]
        if not idx:
            raise ValueError("taps must name at least one layer")
        deepest = max(idx)
        if deepest > self.last_layer:
            raise ValueError(f"tap {deepest} is deeper than this extractor's last layer {self.last_layer}")
        wanted = set(idx)
        found: dict[int, torch.Tensor] = {}
        h = x
        for i in range(deepest + 1):
            h = self.features[i](h)
            if i in wanted:
                found[i] = h
        return [found[i] for i in idx]


def read_weights(path: str | os.PathLike, what: str) -> dict:
    """A torch weight file as a dict, read with ``weights_only`` (no code runs); one-line errors naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{what} weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated/not a torch file: one line, naming the file
        raise WeightsError(f"cannot read {what} weights {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def weight_like(state: dict, key: str, like: torch.Tensor, path: str | os.PathLike, kind: str) -> torch.Tensor:
    """``state[key]``, checked to exist and to have ``like``'s shape (``kind`` names the expected file)."""
    value = state.get(key)
    if value is None:
        raise WeightsError(f"{os.fspath(path)} is not {kind}: key {key!r} missing")
    if tuple(value.shape) != tuple(like.shape):
        raise WeightsError(f"{os.fspath(path)}: {key} has shape {tuple(value.shape)}, expected {tuple(like.shape)}")
    return value


def load_vgg16_weights(model: VGG16Features, path: str | os.PathLike) -> VGG16Features:
    """Load torchvision VGG16 ImageNet weights (e.g. ``vgg16-397923af.pth``) into ``model``.

    ``classifier.*`` keys are ignored, as are layers deeper than ``model.last_layer``. A file
    saved from ``vgg.features`` alone (keys ``0.weight`` …) is accepted too.
    """
    state = read_weights(path, "VGG16")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(
            f"{path} is not a torchvision VGG16 weights file: {len(missing)} keys missing (first: {missing[0]})"
        )
    model.load_state_dict({k: weight_like(state, k, v, path, "a torchvision VGG16 weights file") for k, v in own.items()},
                          strict=True)
    return model
