"""EMA of the trained weights, without copying the frozen base.

An EMA of every parameter of the LightningModule (Lightning's ``EMAWeightAveraging``) means, on
Stable Diffusion, a second 865 M-parameter UNet; only the trained parameters ever change, so this
callback averages exactly those (``pl_module.averaged_parameters()``: adapters, LQFM, MLPs):

* after an optimizer step that :meth:`should_update` admits: the first update copies the weights,
  later ones blend, ``avg ← decay·avg + (1 − decay)·w``;
* validation runs with the average swapped in (and swapped back after), and at the end of
  training the average is copied into the model, so the final export (which follows
  ``on_train_end``) holds the EMA weights;
* the average is the callback's checkpoint state, so a resumed run continues the same average.

It is a plain ``Callback`` using Lightning's public hooks only.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch


class TrainedWeightsEMA(L.Callback):
    """An EMA of the parameters the system trains.

    Args:
        decay: EMA decay per update.
        update_every_n_steps / update_starting_at_step: when to update (0-based optimizer step index).
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps must be >= 1, got {update_every_n_steps}")
        self.decay = float(decay)
        self.update_every_n_steps = int(update_every_n_steps)
        self.update_starting_at_step = update_starting_at_step
        self.latest_update_step = 0  # global step of the last update
        self.n_averaged = 0
        self._live: list[torch.nn.Parameter] = []
        self._average: list[torch.Tensor] = []
        self._pending: dict[str, Any] | None = None

    @property
    def average(self) -> list[torch.Tensor]:
        """The averaged tensors, one per trained parameter (in ``averaged_parameters()`` order)."""
        return self._average

    def should_update(self, step_idx: int) -> bool:
        start = self.update_starting_at_step
        return (start is None or step_idx >= start) and step_idx % self.update_every_n_steps == 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._live = list(pl_module.averaged_parameters())
        self._average = [p.detach().clone() for p in self._live]
        if self._pending is not None:
            self._restore(self._pending)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step <= self.latest_update_step or not self.should_update(step - 1):
            return  # no optimizer step in this batch (accumulation), or not an update step
        for avg, cur in zip(self._average, self._live):
            if self.n_averaged == 0:
                avg.copy_(cur)
            else:
                avg.lerp_(cur.detach().to(avg.dtype), 1.0 - self.decay)
        self.n_averaged += 1
        self.latest_update_step = step

    @torch.no_grad()
    def _swap(self) -> None:
        for avg, cur in zip(self._average, self._live):
            tmp = avg.clone()
            avg.copy_(cur)
            cur.copy_(tmp)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._average and trainer.state.fn == "fit":
            self._swap()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._average and trainer.state.fn == "fit":
            self._swap()

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        for avg, cur in zip(self._average, self._live):
            cur.copy_(avg)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self.latest_update_step, "n_averaged": self.n_averaged,
                "average": [t.detach().cpu() for t in self._average]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._live:
            self._restore(state_dict)
        else:
            self._pending = state_dict  # restored when setup knows the trained parameters

    def _restore(self, state: dict[str, Any]) -> None:
        average = list(state.get("average", []))
        if len(average) != len(self._live) or any(a.shape != p.shape for a, p in zip(average, self._live)):
            raise ValueError(f"EMA state ({len(average)} tensors) does not match the {len(self._live)} trained parameters")
        self._average = [a.to(p.device, p.dtype).clone() for a, p in zip(average, self._live)]
        self.latest_update_step = int(state["latest_update_step"])
        self.n_averaged = int(state.get("n_averaged", 1))
        self._pending = None
