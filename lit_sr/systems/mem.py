"""MEMSystem: trains RCOD's metric estimator (:mod:`lit_sr.model.mem`) against a frozen generator."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.model.conditioning.frozen import FrozenModule
from lit_sr.model.mem import MetricEstimator, generator_latents
from lit_sr.model.noise.ldg import latent_cosine
from lit_sr.systems.distributed import gather_objects


class MEMSystem(L.LightningModule):
    """Trains a :class:`MetricEstimator` against a frozen, trained generator's latents (MSE on M_L).

    The generator only supplies the (z_L, z_H) pairs, so it is held outside the module tree:
    it stays frozen and in eval mode, checkpoints hold the estimator alone, and it follows the
    batch's device on use.
    """

    def __init__(self, generator: nn.Module, estimator: MetricEstimator,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, config: dict | None = None) -> None:
        super().__init__()
        self._generator = FrozenModule(generator)
        self.estimator = estimator
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=1e-3)
        self.config = config or {}
        self.save_hyperparameters({"config": self.config})
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    partial_backward = False  # one optimizer, every estimator parameter in every backward

    def averaged_parameters(self) -> list[nn.Parameter]:
        return list(self.estimator.parameters())

    @property
    def generator(self) -> nn.Module:
        return self._generator.module

    def configure_optimizers(self):
        return self.optimizer_factory(self.estimator.parameters())

    def _pairs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            generator = self._generator.on(batch["lq"])
            z_lq, z_hq, x = generator_latents(generator, batch["lq"], batch["hq"])
            target = latent_cosine(z_lq, z_hq)
        return self.estimator(z_lq, x), target

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred, target = self._pairs(batch)
        loss = F.mse_loss(pred, target)
        self.log("train/mem_mse", loss.detach(), prog_bar=True, batch_size=pred.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred, target = self._pairs(batch)
        self._val.append((pred.detach().float().cpu(), target.detach().float().cpu()))

    def on_validation_epoch_end(self) -> None:
        # Every rank's validation shard, so each rank computes (and logs) the same numbers.
        shards = gather_objects(self._val, self.trainer.world_size)
        self._val = []
        if not any(shards):
            return
        pred = torch.cat([p for shard in shards for p, _ in shard])
        target = torch.cat([t for shard in shards for _, t in shard])
        self.log("val/mem_mae", (pred - target).abs().mean().item(), sync_dist=True)
        if pred.numel() > 1 and pred.std() > 0 and target.std() > 0:
            self.log("val/mem_corr", torch.corrcoef(torch.stack([pred, target]))[0, 1].item(), sync_dist=True)
        grouping = self.generator.noise.group_index  # how often the estimate picks LDG's true group
        self.log("val/mem_group_acc", (grouping(pred) == grouping(target)).float().mean().item(), sync_dist=True)
