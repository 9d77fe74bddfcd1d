"""The conditioner interface: a batch → ``encoder_hidden_states`` for the UNet."""
from __future__ import annotations

import abc

import torch
from torch import nn


class Conditioner(nn.Module, metaclass=abc.ABCMeta):
    """Produces (B, L, D) cross-attention states, D = the UNet's cross-attention width.

    ``attach(backbone)`` is called once by the generator with the frozen pretrained parts; a
    conditioner keeps only what it needs (a cached embedding, a frozen encoder, its own MLP).
    """

    #: True when the conditioner reads per-image text (prompts/tags) from the batch.
    uses_text: bool = False

    @abc.abstractmethod
    def attach(self, backbone) -> None:
        """Take what is needed from the backbone."""

    @abc.abstractmethod
    def forward(self, lq_up: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """``lq_up`` is the upsampled LQ in [-1, 1]; ``batch`` may carry prompts."""
