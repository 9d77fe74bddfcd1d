"""Conditioners: what the UNet's cross-attention attends to (``encoder_hidden_states``)."""
from lit_sr.model.conditioning.base import Conditioner

__all__ = ["Conditioner"]
