"""Image-space blending of two endpoint outputs (IFCSR): the realism dial at zero network cost."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def blend(x_fid: torch.Tensor, x_real: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """``(1 − γ)·x_fid + γ·x_real``; γ is a float or a per-sample (B,) tensor in [0, 1].

    γ = 0 returns ``x_fid`` and γ = 1 returns ``x_real`` exactly (not up to rounding).
    """
    if isinstance(gamma, torch.Tensor):
        if gamma.ndim == 1:
            gamma = gamma.to(x_fid.dtype)[:, None, None, None]
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
