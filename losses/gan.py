"""Adversarial loss with a light patch discriminator (the optional GAN term of S3Diff / CODSR stage 1).

The discriminator is a PatchGAN (pix2pix's N-layer design) with spectral normalisation; it is
owned by the term and updated by its own optimizer in the system's aux phase. The two updates
are kept apart on purpose:

* generator step — the discriminator's parameters do not require grad, so the generator loss
  gives them no gradient (S3Diff's reference code let them accumulate one);
* discriminator step — it sees ``sr.detach()``, so nothing flows back into the generator.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from lit_sr.model.output import SROutput
from losses.base import LossTerm, OptimizerFactory


class PatchDiscriminator(nn.Module):
    """Conv stack → one logit per receptive-field patch; images in [0, 1]."""

    def __init__(self, channels: int = 64, num_layers: int = 3, max_channels: int = 512) -> None:
        super().__init__()
        if num_layers < 1 or channels < 1:
            raise ValueError(f"need channels >= 1 and num_layers >= 1, got {channels}, {num_layers}")
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(3, channels, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, num_layers):
            nxt = min(channels * 2 ** i, max_channels)
            stride = 2 if i < num_layers - 1 else 1
            layers += [spectral_norm(nn.Conv2d(ch, nxt, 4, stride=stride, padding=1)), nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(spectral_norm(nn.Conv2d(ch, 1, 4, stride=1, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class GANLoss(LossTerm):
    """Generator side ``−D(sr)`` (hinge) or ``softplus(−D(sr))`` (non-saturating); owns D.

    Args:
        loss_type: ``hinge`` or ``nonsaturating``.
        channels, num_layers: discriminator width and depth.
        optimizer, grad_clip: the discriminator's optimizer partial (default: AdamW, lr 5e-5,
            weight decay 1e-2) and gradient-norm clip.
    """

    def __init__(
        self,
        weight: float = 0.1,
        loss_type: Literal["hinge", "nonsaturating"] = "hinge",
        channels: int = 64,
        num_layers: int = 3,
        optimizer: OptimizerFactory | None = None,
        grad_clip: float | None = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(weight, optimizer, grad_clip)
        if loss_type not in ("hinge", "nonsaturating"):
            raise ValueError(f"loss_type must be 'hinge' or 'nonsaturating', got {loss_type!r}")
        self.loss_type = loss_type
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the global RNG alone
            torch.manual_seed(seed)
            self.discriminator = PatchDiscriminator(channels, num_layers)

    def own_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2)
        return self.optimizer_factory(params)

    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        logits = self.discriminator(out.sr.float())
        if self.loss_type == "hinge":
            return -logits.mean()
        return F.softplus(-logits).mean()

    def aux_loss(self, out: SROutput, batch: dict) -> torch.Tensor:
        real = self.discriminator(batch["hq"].float())
        fake = self.discriminator(out.sr.detach().float())
        if self.loss_type == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()
