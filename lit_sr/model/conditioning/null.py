"""The empty-prompt conditioner (computed once, then the text encoder is not kept)."""
from __future__ import annotations

import torch

from lit_sr.errors import ConfigError
from lit_sr.model.conditioning.base import Conditioner


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """CLIP text-encoder hidden states for prompts padded to the tokenizer's max length."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


class NullConditioner(Conditioner):
    """Every image is conditioned on the embedding of ``prompt`` (default: the empty prompt)."""

    def __init__(self, prompt: str = "") -> None:
        super().__init__()
        self.prompt = prompt
        self.register_buffer("embedding", torch.empty(0), persistent=False)

    def attach(self, backbone) -> None:
        if backbone.text_encoder is None or backbone.tokenizer is None:
            raise ConfigError("conditioning=empty needs the backbone's text encoder (backbone.text_encoder=true)")
        self.embedding = encode_prompts(backbone.text_encoder, backbone.tokenizer, [self.prompt]).float()

    def forward(self, lq_up: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        return self.embedding.to(lq_up.dtype).expand(lq_up.shape[0], -1, -1)

    def prompt_embedding(self, prompt: str) -> torch.Tensor | None:
        # Only the one prompt embedded at attach: the text encoder is not kept.
        return self.embedding if prompt == self.prompt and self.embedding.numel() else None
