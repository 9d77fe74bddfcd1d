"""Image-space blending of two endpoint outputs (IFCSR): the realism dial at zero network cost.

Two forms of one rule, ``(1 − Γ)·x_fid + Γ·x_real``, with Γ a number, one number per sample, or
a per-pixel γ map (region control):

* :func:`blend` on float tensors (training, inference);
* :func:`blend_uint8` on 8-bit images: ``floor((1 − w)·a + w·b + 0.5)`` per channel in float64
  (round half up), with an 8-bit γ map ``g`` standing for ``g / 255`` — exactly what the studio page
  computes in the browser, so a page export is reproduced to the bit by ``python -m lit_sr.blend``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def blend(x_fid: torch.Tensor, x_real: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """``(1 − γ)·x_fid + γ·x_real``; γ is a float, a per-sample (B,) tensor, or a γ map
    ((H, W), (B or 1, 1, H, W)) in [0, 1].

    γ = 0 returns ``x_fid`` and γ = 1 returns ``x_real`` exactly (not up to rounding).
    """
    if isinstance(gamma, torch.Tensor):
        if gamma.ndim == 1:
            gamma = gamma.to(x_fid.dtype)[:, None, None, None]
        elif gamma.ndim == 2:
            gamma = gamma[None, None]
        if gamma.ndim == 4 and gamma.shape[-2:] not in ((1, 1), x_fid.shape[-2:]):
            raise ValueError(f"gamma map {tuple(gamma.shape[-2:])} does not match the image {tuple(x_fid.shape[-2:])}")
        if bool(((gamma < 0) | (gamma > 1)).any()):
            raise ValueError("gamma must lie in [0, 1]")
        return torch.lerp(x_fid, x_real, gamma) if x_fid.dtype == x_real.dtype else (1 - gamma) * x_fid + gamma * x_real
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    if gamma == 0.0:
        return x_fid.clone()
    if gamma == 1.0:
        return x_real.clone()
    return (1.0 - gamma) * x_fid + gamma * x_real


def blend_many(x_fid: torch.Tensor, x_real: torch.Tensor, gammas: Sequence[float]) -> list[torch.Tensor]:
    """One blend per γ from the same two endpoints (no further network calls)."""
    return [blend(x_fid, x_real, g) for g in gammas]


def _mix_round(a: np.ndarray, b: np.ndarray, w: float | np.ndarray) -> np.ndarray:
    """``floor((1 − w)·a + w·b + 0.5)`` in float64, the operation order of the page's tables."""
    out = np.floor((1.0 - w) * a.astype(np.float64) + w * b.astype(np.float64) + 0.5)
    return np.clip(out, 0, 255).astype(np.uint8)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, x in (("first image", a), ("second image", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"{name} must be an H×W×3 uint8 array, got {describe(x)}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")


def blend_uint8(x_fid: np.ndarray, x_real: np.ndarray, gamma: float | np.ndarray) -> np.ndarray:
    """The page's endpoint blend; ``gamma`` is a float in [0, 1] or an H×W uint8 γ map (g / 255)."""
    _check_pair(x_fid, x_real)
    if isinstance(gamma, np.ndarray):
        if gamma.dtype != np.uint8 or gamma.shape != x_fid.shape[:2]:
            h, w = x_fid.shape[:2]
            raise ValueError(f"gamma map must be an {h}×{w} uint8 array, got {describe(gamma)}")
        return _mix_round(x_fid, x_real, (gamma.astype(np.float64) / 255.0)[..., None])
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    return _mix_round(x_fid, x_real, gamma)


def interpolate_uint8(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """The page's rule between two neighbouring knob images: weight ``w`` ∈ [0, 1] towards ``b``."""
    _check_pair(a, b)
    w = float(w)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"interpolation weight must lie in [0, 1], got {w}")
    return _mix_round(a, b, w)


def describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"shape {x.shape} dtype {x.dtype}"
    if isinstance(x, tuple | list):
        return f"{type(x).__name__} of length {len(x)}"
    return type(x).__name__
