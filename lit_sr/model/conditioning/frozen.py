"""Keeping a frozen pretrained encoder next to a conditioner without making it part of the model.

A conditioner that runs a CLIP encoder on every batch must keep it, but the encoder is backbone
weight, not something training produces: it must not appear in ``named_parameters()`` (the
generator saves every non-UNet/VAE parameter as trained state), must never get gradients, and
must stay in eval mode when the generator is put in training mode. Holding it outside the
module tree gives all three; it follows the input's device on use.
"""
from __future__ import annotations

import torch
from torch import nn


class FrozenModule:
    """A reference to a frozen module that ``nn.Module`` does not register as a child."""

    def __init__(self, module: nn.Module) -> None:
        module.requires_grad_(False)
        self.module = module.eval()

    def on(self, ref: torch.Tensor) -> nn.Module:
        """The module on ``ref``'s device (a no-op after the first call on that device)."""
        p = next(self.module.parameters(), None)
        if p is not None and p.device != ref.device:
            self.module.to(ref.device)
        return self.module

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.module.parameters(), None)
        return p.dtype if p is not None else torch.float32
