"""RCOD's visual prompt injection module (VPIM): CLIP vision tokens of the LQ replace text.

Text prompts describe content but not degradation, and tags extracted from a degraded image can
be wrong. VPIM conditions the UNet on the LQ itself:

    x (upsampled LQ, [-1, 1]) → [0, 1] → resize to the encoder's image size (bicubic, antialiased)
      → CLIP mean/std normalisation → frozen CLIP vision encoder → all token states
      (last_hidden_state: class token + patches) → trainable MLP → the denoiser's token width
      (a UNet's cross-attention width, an MM-DiT's joint-attention input width)

Families that also take a pooled vector (SD3) get one from the pooled class-token state through a
trainable linear layer (``pool``), zero-initialised so training starts from a neutral pooled input.

Preprocessing runs in torch on the batch (no PIL round trip). RCOD's reference code differs in
two details, both available here: it feeds the [-1, 1] image without CLIP normalisation
(``normalize: false``) and projects with a single linear layer (``hidden: 0``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.errors import ConfigError
from lit_sr.model.condition import Condition
from lit_sr.model.conditioning.base import Conditioner
from lit_sr.model.conditioning.frozen import FrozenModule
from lit_sr.model.facts import RunFacts

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VPIMConditioner(Conditioner):
    """Frozen CLIP vision tokens of the LQ through a trainable MLP."""

    def __init__(self, hidden: int | None = None, image_size: int | None = None, normalize: bool = True) -> None:
        super().__init__()
        if hidden is not None and hidden < 0:
            raise ValueError(f"conditioning.hidden must be >= 0 or null, got {hidden}")
        if image_size is not None and image_size <= 0:
            raise ValueError(f"conditioning.image_size must be > 0 or null, got {image_size}")
        self.hidden = hidden
        self.image_size = image_size
        self.normalize = bool(normalize)
        self._encoder: FrozenModule | None = None
        self.mlp: nn.Module | None = None
        self.pool: nn.Module | None = None
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def requires(cls, node, facts: RunFacts) -> str | None:
        if not facts.vision_encoder:
            return ("conditioning=vpim needs a CLIP vision encoder: set backbone.vision_encoder=true (tiny) "
                    "or backbone.vision_encoder=/path/to/clip-vision (sd21)")
        return None

    def attach(self, backbone) -> None:
        vision = backbone.vision_encoder
        if vision is None:
            raise ConfigError("conditioning=vpim needs a CLIP vision encoder (backbone.vision_encoder)")
        self._encoder = FrozenModule(vision)
        self.image_size = int(self.image_size or vision.config.image_size)
        d_in, d_out = int(vision.config.hidden_size), int(backbone.denoiser.cond_width)
        if self.hidden == 0:  # the reference code's single projection
            self.mlp = nn.Linear(d_in, d_out)
        else:
            width = int(self.hidden or d_in)
            self.mlp = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, d_out))
        pooled = backbone.denoiser.pooled_width
        if pooled is not None:
            self.pool = nn.Linear(d_in, int(pooled))
            nn.init.zeros_(self.pool.weight)
            nn.init.zeros_(self.pool.bias)

    def pixel_values(self, lq_up: torch.Tensor) -> torch.Tensor:
        """The encoder's input for an image batch in [-1, 1]."""
        size = self.image_size
        if self.normalize:
            x = (lq_up.float() * 0.5 + 0.5).clamp(0, 1)
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            return (x - self.mean.to(x.device)) / self.std.to(x.device)
        return F.interpolate(lq_up.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)

    def encoded(self, lq_up: torch.Tensor):
        """The frozen vision encoder's output (``last_hidden_state``, ``pooler_output``; no gradient)."""
        if self._encoder is None:
            raise RuntimeError("VPIMConditioner used before attach(backbone)")
        encoder = self._encoder.on(lq_up)
        with torch.no_grad():
            pixels = self.pixel_values(lq_up).to(self._encoder.dtype)
            return encoder(pixel_values=pixels)

    def tokens(self, lq_up: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, hidden) frozen vision-encoder states (no gradient)."""
        return self.encoded(lq_up).last_hidden_state

    def forward(self, lq_up: torch.Tensor, batch: dict | None = None) -> Condition:
        out = self.encoded(lq_up)
        weight = next(self.mlp.parameters())
        tokens = self.mlp(out.last_hidden_state.to(weight.dtype))
        pooled = None if self.pool is None else self.pool(out.pooler_output.to(weight.dtype))
        return Condition(tokens, pooled)
