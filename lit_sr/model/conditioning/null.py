"""The fixed-prompt conditioner (computed once, then the text encoder is not kept)."""
from __future__ import annotations

import torch

from lit_sr.errors import ConfigError
from lit_sr.model.condition import Condition, ConditionBuffer
from lit_sr.model.conditioning.base import Conditioner


class NullConditioner(Conditioner):
    """Every image is conditioned on the embedding of ``prompt`` (default: the empty prompt)."""

    def __init__(self, prompt: str = "") -> None:
        super().__init__()
        self.prompt = prompt
        self.embedding = ConditionBuffer()

    def attach(self, backbone) -> None:
        if backbone.prompts is None:
            raise ConfigError("conditioning=empty needs the backbone's text encoder (backbone.text_encoder=true)")
        self.embedding.set(backbone.prompts.encode([self.prompt]))

    def forward(self, lq_up: torch.Tensor, batch: dict | None = None) -> Condition:
        return self.embedding.get().to(lq_up.dtype).expand(lq_up.shape[0])

    def prompt_embedding(self, prompt: str) -> Condition | None:
        # Only the one prompt embedded at attach: the text encoder is not kept.
        return self.embedding.get() if prompt == self.prompt and not self.embedding.empty else None
