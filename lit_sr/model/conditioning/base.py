"""The conditioner interface: a batch → the :class:`~lit_sr.model.condition.Condition` the denoiser attends to."""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from lit_sr.model.condition import Condition
from lit_sr.model.facts import Checked


class Conditioner(Checked, nn.Module, metaclass=abc.ABCMeta):
    """Produces the denoiser's condition: (B, L, D) token states, D = the denoiser's ``cond_width``,
    plus a (B, P) pooled vector for families that take one (``denoiser.pooled_width``; SD3).

    ``attach(backbone)`` is called once by the generator with the frozen pretrained parts; a
    conditioner keeps only what it needs (a cached embedding, the prompt encoder, its own MLP).

    Hooks declared here: ``uses_text`` (per-image prompts are read from the batch),
    ``negative_prompt`` (the conditioner's own unconditional prompt, for classifier-free
    guidance users such as VSD's real score), :meth:`prompts_for`, :meth:`prompt_embedding` and
    :meth:`requires`.
    """

    uses_text: ClassVar[bool] = False
    negative_prompt: str | None = None
    tokenizer: Any = None  # the prompt tokenizer of text conditioners (TMG's CoMat finds noun tokens with it)


    @abc.abstractmethod
    def attach(self, backbone) -> None:
        """Take what is needed from the backbone."""

    @abc.abstractmethod
    def forward(self, lq_up: torch.Tensor, batch: dict | None = None) -> Condition:
        """``lq_up`` is the upsampled LQ in [-1, 1]; ``batch`` may carry prompts."""

    def prompts_for(self, batch: dict | None, batch_size: int) -> list[str] | None:
        """The text prompt each image of the batch is conditioned on (None: this conditioner reads no text)."""
        return None

    def prompt_embedding(self, prompt: str) -> Condition | None:
        """The (batch 1) condition of a fixed text prompt, or None when this conditioner cannot make one."""
        return None
