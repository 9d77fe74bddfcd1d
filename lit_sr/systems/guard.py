"""Non-finite steps: skipped with a counted warning, then a clear stop.

A step whose loss or gradient is NaN/Inf (a learning rate far too high, a corrupt sample) would
poison the weights for good. The guard checks the accumulated loss and every gradient of an
optimizer before its step — all ranks agree, since after DDP's all-reduce one rank's NaN is
everyone's — and the system skips the step (weights untouched). Past ``max_skips`` skipped steps
training stops with one line: a run that keeps diverging must not go on, and must not export.
"""
from __future__ import annotations

import logging

import torch

from lit_sr.errors import LitSRError

log = logging.getLogger(__name__)


class NonFiniteTraining(LitSRError):
    """Training stopped after too many non-finite losses or gradients."""


class FiniteGuard:
    def __init__(self, max_skips: int, lr: float) -> None:
        self.max_skips, self.lr = int(max_skips), float(lr)
        self.skipped = 0

    def allow(self, opt, loss_finite: bool, values: dict[str, torch.Tensor], what: str, step: int, strategy=None) -> bool:
        """True when ``opt`` may step; otherwise counts the skip (and raises past the limit)."""
        finite = loss_finite
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if finite and grads:
            finite = bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if strategy is not None:
            finite = strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return True
        self.skipped += 1
        shown = ", ".join(f"train/{k}={float(v.detach()):.4g}" for k, v in values.items())
        log.warning("step %d: non-finite loss or gradient in the %s update (%s): step skipped (%d of at most %d)",
                    step, what, shown, self.skipped, self.max_skips)
        if self.skipped > self.max_skips:
            raise NonFiniteTraining(f"training stopped: {self.skipped} optimizer steps had a non-finite loss or "
                                    f"gradient (last: step {step}, {shown}); lower optim.lr (now {self.lr:g}) or "
                                    f"check the data (optim.max_nonfinite_steps={self.max_skips})")
        return False
