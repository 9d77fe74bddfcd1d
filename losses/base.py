"""The loss-term interface shared by every training objective.

Every hook the training system uses is declared on :class:`LossTerm`; a term overrides what it
needs and nothing else is looked up.

* ``forward(out, batch)`` — the *unweighted* scalar; the system multiplies by ``weight``.
* ``requires(node, facts)`` — combinations with the rest of the run that cannot work (config time).
* ``generator_adapters(node, presets)`` — LoRA adapters the term keeps on the generator's denoiser
  (VSD's fake score; ``presets``: the family's LoRA target presets); the builder creates them with
  the generator, inactive and frozen, so checkpoint and export keys do not depend on whether the
  term is built.
* ``attach(generator, backbone)`` — bind to the generator once before training (capture hooks,
  negative-prompt embeddings); ``backbone`` holds the pretrained parts and is not to be kept.
* ``own_parameters()`` / ``aux_loss(out, batch)`` — networks the term owns (VSD's fake LoRA, a
  GAN discriminator) and their loss; the system steps them with :meth:`configure_optimizer` after
  the generator step, clipping gradients at ``grad_clip`` (None: the generator's setting).
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lit_sr.model.adapters import LoRASpec
from lit_sr.model.facts import Checked
from lit_sr.model.output import SROutput

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class LossTerm(Checked, nn.Module, metaclass=abc.ABCMeta):
    """One weighted term of the training objective (see the module docstring for the hooks).

    Args:
        weight: the term's weight in the generator loss.
        optimizer: optimizer of the term's own networks, a partial taking the parameters (config:
            a ``_partial_: true`` node); None: AdamW at lr 1e-4.
        grad_clip: gradient-norm clip of the term's own networks (None: the generator's).
    """

    def __init__(self, weight: float = 1.0, optimizer: OptimizerFactory | None = None,
                 grad_clip: float | None = None) -> None:
        super().__init__()
        self.weight = float(weight)
        self.optimizer_factory = optimizer
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {grad_clip}")
        self.grad_clip = grad_clip

    @abc.abstractmethod
    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        """The unweighted scalar loss."""


    @classmethod
    def generator_adapters(cls, node: Any, presets: dict[str, list[str]]) -> dict[str, LoRASpec]:
        """Adapters (name → spec) this term keeps on the generator's denoiser; built with the generator."""
        return {}

    def attach(self, generator: nn.Module, backbone: Any = None) -> None:
        """Bind to the generator before training (default: nothing to bind)."""

    def own_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters this term owns (updated by its own optimizer)."""
        return []

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.AdamW(params, lr=1e-4)
        return self.optimizer_factory(params)

    def aux_loss(self, out: SROutput, batch: dict) -> torch.Tensor:
        """Loss for the term's own networks, computed after the generator step."""
        raise TypeError(f"{type(self).__name__} owns parameters but defines no aux_loss")


class ImageLoss(LossTerm):
    """A term that compares the SR image with the HQ target (both in [0, 1])."""

    @abc.abstractmethod
    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar distance between two image batches in [0, 1]."""

    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        return self.distance(out.sr, batch["hq"])
