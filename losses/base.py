"""The loss-term interface shared by every training objective."""
from __future__ import annotations

import abc

import torch
from torch import nn

from lit_sr.model.output import SROutput


class LossTerm(nn.Module, metaclass=abc.ABCMeta):
    """One weighted term of the training objective.

    ``forward(out, batch)`` returns the *unweighted* scalar; the system multiplies by
    ``weight`` and logs both. Terms that own trainable networks (VSD's fake score, a GAN
    discriminator) expose them through :meth:`own_parameters` so the system can give them
    their own optimizer.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    @abc.abstractmethod
    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        """The unweighted scalar loss."""

    def own_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters this term owns (updated by its own optimizer)."""
        return []

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=float(getattr(self, "lr", 1e-4)))

    def aux_loss(self, out: SROutput, batch: dict, system) -> torch.Tensor:
        """Loss for the term's own networks, computed after the generator step."""
        raise TypeError(f"{type(self).__name__} owns parameters but defines no aux_loss")


class ImageLoss(LossTerm):
    """A term that compares the SR image with the HQ target (both in [0, 1])."""

    @abc.abstractmethod
    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar distance between two image batches in [0, 1]."""

    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        return self.distance(out.sr, batch["hq"])
