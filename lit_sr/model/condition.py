"""What a denoiser is conditioned on: token states, plus a pooled vector for families that take one.

SD-2.1's UNet cross-attends to CLIP token states only; SD3's MM-DiT also takes a pooled text
vector (CLIP-L + CLIP-G projections) into its timestep embedding. Conditioners produce a
:class:`Condition`, the denoiser consumes it, and everything in between (VSD's classifier-free
guidance batches, caching, dtype casts) treats it as one value.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Condition:
    """(B, L, D) token states and an optional (B, P) pooled vector."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Condition:
        return Condition(self.tokens.to(device=device, dtype=dtype),
                         None if self.pooled is None else self.pooled.to(device=device, dtype=dtype))

    def detach(self) -> Condition:
        return Condition(self.tokens.detach(), None if self.pooled is None else self.pooled.detach())

    def expand(self, batch_size: int) -> Condition:
        """One condition (batch 1) repeated for ``batch_size`` images (a view); a full batch as is."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand a condition of batch {self.batch_size} to {batch_size}")
        return Condition(self.tokens.expand(batch_size, -1, -1),
                         None if self.pooled is None else self.pooled.expand(batch_size, -1))

    def matches(self, other: Condition) -> bool:
        """True when both can be concatenated along the batch (same token count and widths)."""
        return (self.tokens.shape[1:] == other.tokens.shape[1:]
                and (self.pooled is None) == (other.pooled is None)
                and (self.pooled is None or self.pooled.shape[1:] == other.pooled.shape[1:]))

    @staticmethod
    def cat(parts: list[Condition]) -> Condition:
        pooled = [p.pooled for p in parts]
        return Condition(torch.cat([p.tokens for p in parts]),
                         None if any(v is None for v in pooled) else torch.cat(pooled))

    @staticmethod
    def stack(parts: list[Condition]) -> Condition:
        """Batch-1-less conditions (per-image rows, as cached) stacked into a batch."""
        pooled = [p.pooled for p in parts]
        return Condition(torch.stack([p.tokens for p in parts]),
                         None if any(v is None for v in pooled) else torch.stack(pooled))

    def rows(self) -> list[Condition]:
        """The batch split into per-image rows (no batch dimension), for per-prompt caches."""
        return [Condition(self.tokens[i], None if self.pooled is None else self.pooled[i])
                for i in range(self.batch_size)]


class ConditionBuffer(nn.Module):
    """A fixed :class:`Condition` held as (non-persistent) buffers, so it follows ``.to(device)``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("tokens", torch.empty(0), persistent=False)
        self.register_buffer("pooled", torch.empty(0), persistent=False)
        self._has_pooled = False

    def set(self, cond: Condition) -> None:
        self.tokens = cond.tokens.detach().float()
        self._has_pooled = cond.pooled is not None
        self.pooled = cond.pooled.detach().float() if cond.pooled is not None else torch.empty(0)

    @property
    def empty(self) -> bool:
        return self.tokens.numel() == 0

    def get(self) -> Condition:
        if self.empty:
            raise RuntimeError("condition used before it was computed (attach the conditioner first)")
        return Condition(self.tokens, self.pooled if self._has_pooled else None)


class PromptEncoder(abc.ABC):
    """Text prompts → :class:`Condition` with a family's frozen text encoder(s).

    The encoders are backbone weights, not trained state: they are held outside the module tree
    (:class:`~lit_sr.model.conditioning.frozen.FrozenModule`) and follow the ``ref`` tensor's
    device on use. ``tokenizer`` is the CLIP tokenizer whose token positions index the leading
    tokens of ``Condition.tokens`` (TMG's CoMat finds a noun's tokens with it).
    """

    tokenizer: Any = None

    @abc.abstractmethod
    def encode(self, prompts: list[str], ref: torch.Tensor | None = None) -> Condition:
        """(len(prompts), L, D) float32 states (+ pooled) of prompts, on ``ref``'s device, no gradient."""
