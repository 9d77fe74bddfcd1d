"""Conditioners: what the denoiser attends to (a :class:`~lit_sr.model.condition.Condition`: token states, pooled vector)."""
from lit_sr.model.conditioning.base import Conditioner

__all__ = ["Conditioner"]
