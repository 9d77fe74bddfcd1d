"""Logs the last training step's values, whatever ``trainer.log_every_n_steps`` says.

Lightning writes step-level values (``train/*``) only every ``log_every_n_steps`` steps, so a run
shorter than that (the default is 10) logs none, and a longer one loses its final values unless
``max_steps`` is a multiple of it. This callback makes the step that ends training a logging step.
"""
from __future__ import annotations

import lightning as L

from lit_sr.lightning_access import is_last_batch_of_epoch


class LogLastStep(L.Callback):
    """On the batch that ends training (``max_steps`` reached, or the last batch of ``max_epochs``),
    log its values: Lightning decides after ``on_train_batch_end`` whether to log, from
    ``trainer.log_every_n_steps``, which this sets to 1 for that batch."""

    def __init__(self) -> None:
        self._every: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._every is None and self._is_last_batch(trainer) and trainer.log_every_n_steps > 0:
            self._every = trainer.log_every_n_steps
            trainer.log_every_n_steps = 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._every is not None:
            trainer.log_every_n_steps, self._every = self._every, None

    @staticmethod
    def _is_last_batch(trainer: L.Trainer) -> bool:
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        max_epochs = trainer.max_epochs
        return (max_epochs is not None and max_epochs > 0 and trainer.current_epoch >= max_epochs - 1
                and is_last_batch_of_epoch(trainer))
