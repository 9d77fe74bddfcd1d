"""SRSystem: the LightningModule that wires a generator, loss terms and optimizers.

It contains no architecture: the generator, each loss term and the validation metrics are
injected modules. Optimisation is manual so that loss terms owning their own networks (VSD's
fake score, a GAN discriminator) can take their own optimizer step after the generator's.

Checkpoints hold only what training changes (adapters, modulation, conditioner MLPs, loss-term
networks, optimizer and RNG state), not the frozen backbone: a Stable Diffusion checkpoint is a
few MB instead of several GB.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from lit_sr.generator import OneStepSR
from losses.base import LossTerm

log = logging.getLogger(__name__)


class SRSystem(L.LightningModule):
    """Trains a :class:`OneStepSR` with a weighted sum of :class:`LossTerm` s."""

    def __init__(
        self,
        generator: OneStepSR,
        losses: dict[str, LossTerm],
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float | None = 1.0,
        val_metrics: nn.Module | None = None,
        seed: int = 0,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable state only; checked in on_load_checkpoint
        self.generator = generator
        self.losses = nn.ModuleDict(losses)
        if not losses:
            raise ValueError("loss.terms is empty: nothing to train")
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), tuple(betas)
        self.grad_clip = grad_clip
        self.val_metrics = val_metrics
        self.seed = int(seed)
        self.config = config or {}
        # Hyperparameters are the plain config; the networks are not (they are modules).
        self.save_hyperparameters({"config": self.config})
        self._noise_gen: torch.Generator | None = None
        self._skipped_epoch = 0

    # ------------------------------------------------------------------ setup
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.generator.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise ValueError("no trainable parameters: check lora/modulation/conditioning settings")
        optimizers = [torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)]
        for term in self.losses.values():
            own = term.own_parameters()
            if own:
                optimizers.append(term.configure_optimizer(own))
        return optimizers

    def on_fit_start(self) -> None:
        # Per-rank generator: ranks draw different noise, runs with the same seed draw the same.
        self._noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * self.global_rank)

    @property
    def noise_generator(self) -> torch.Generator:
        if self._noise_gen is None or self._noise_gen.device != self.device:
            self._noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * self.global_rank)
        return self._noise_gen

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        gen_opt = opts[0]
        out = self.generator.step(batch["lq"], hq=batch["hq"], batch=batch, generator=self.noise_generator)
        total = torch.zeros((), device=self.device)
        bs = batch["lq"].shape[0]
        for name, term in self.losses.items():
            value = term(out, batch)
            total = total + term.weight * value
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        gen_opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        if self.grad_clip:
            self.clip_gradients(gen_opt, gradient_clip_val=float(self.grad_clip), gradient_clip_algorithm="norm")
        gen_opt.step()
        # Terms with their own networks update them after the generator step, on detached outputs.
        idx = 1
        for name, term in self.losses.items():
            if term.own_parameters():
                opt = opts[idx]
                idx += 1
                aux = term.aux_loss(out, batch, self)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(aux)
                opt.step()
                self.log(f"train/{name}_aux", aux.detach(), batch_size=bs)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        if "skipped" in batch:
            self._skipped_epoch += int(batch["skipped"].sum())
        return total.detach()

    def on_train_epoch_end(self) -> None:
        skipped = torch.tensor(float(self._skipped_epoch), device=self.device)
        skipped = self.all_gather(skipped).sum() if self.trainer.world_size > 1 else skipped
        if skipped > 0 and self.global_rank == 0:
            log.warning("epoch %d: skipped %d unreadable or too-small training images (see warnings above)",
                        self.current_epoch, int(skipped))
        self.log("data/skipped", skipped, reduce_fx="sum", sync_dist=False)
        self._skipped_epoch = 0

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        sr = self.generator(batch["lq"])
        if self.val_metrics is not None:
            self.val_metrics.update(sr.float(), batch["hq"].float())
        return {"sr": sr.detach()}

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics is None:
            return
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        for name, value in values.items():
            self.log(f"val/{name}", float(value), sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------------ checkpoints
    def _trainable_keys(self) -> set[str]:
        keys = {f"generator.{k}" for k in self.generator.trainable_state_dict()}
        for name, term in self.losses.items():
            keys |= {f"losses.{name}.{k}" for k, _ in term.named_parameters() if _ in term.own_parameters()}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["lit_sr"] = {"noise_rng": self.noise_generator.get_state().cpu(), "version": 1}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}: "
                             "it was written by a different model configuration")
        state = checkpoint.get("lit_sr", {}).get("noise_rng")
        if state is not None:
            self._pending_rng = state

    def on_train_start(self) -> None:
        state = getattr(self, "_pending_rng", None)
        if state is not None:
            self.noise_generator.set_state(state.to(self.noise_generator.device) if self.device.type != "cpu" else state)
            self._pending_rng = None
