"""EMA of the trained weights through Lightning's weight-averaging callback, without copying the base.

Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` averages (and swaps in for
validation, and copies over at the end of training) every parameter and buffer of the
LightningModule, which for Stable Diffusion means a second 865 M-parameter UNet. Only the
trained parameters ever change, so this subclass averages exactly those
(``pl_module.averaged_parameters()``): the validation runs and the final export (which follows
``on_train_end``) use the EMA weights, the frozen base is never copied. The averaged tensors are
kept in the callback's own checkpoint state, so resuming continues the same average.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel


class _Trained(nn.Module):
    """A module that holds references to the trained parameters (no copies)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)


class TrainedWeightsEMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` restricted to the parameters the system trains.

    Args:
        decay: EMA decay per update.
        update_every_n_steps / update_starting_at_step: when to update (optimizer steps).
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step, use_buffers=False)
        self._live: _Trained | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._live = _Trained(list(pl_module.averaged_parameters()))
        self._average_model = AveragedModel(self._live, use_buffers=False, **self._kwargs)
        if self._pending is not None:
            self._restore(self._pending)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._average_model.update_parameters(self._live)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # updates are per optimizer step only

    def _pairs(self):
        return zip(self._average_model.module.params, self._live.params)

    def _swap_models(self, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            for avg, cur in self._pairs():
                tmp = avg.detach().clone()
                avg.copy_(cur)
                cur.copy_(tmp)

    def _copy_average_to_current(self, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            for avg, cur in self._pairs():
                cur.copy_(avg)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        pass  # the model's state_dict stays the current weights; the average lives in state_dict() below

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"latest_update_step": self._latest_update_step}
        if self._average_model is not None:
            state["average"] = {k: v.detach().cpu() for k, v in self._average_model.state_dict().items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]
        if "average" in state_dict:
            if self._average_model is None:
                self._pending = state_dict  # restored when setup builds the average model
            else:
                self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        own = self._average_model.state_dict()
        missing = set(own) - set(state["average"])
        if missing:
            raise ValueError(f"EMA state does not match the trained parameters (missing {sorted(missing)[0]})")
        self._average_model.load_state_dict({k: v.to(own[k].device) for k, v in state["average"].items()})
        self._pending = None
