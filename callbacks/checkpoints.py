"""``last.ckpt``: the checkpoint a resume starts from, written at every point where one is due.

Lightning's ``ModelCheckpoint`` ranks checkpoints by a monitored metric, and with manual
optimisation it defers step-based saves until that metric exists, so it cannot promise a recent
``last.ckpt``. This callback does only that, and always: every ``every_n_train_steps`` optimizer
steps (pre-emption insurance on long runs), after every validation run, and when training ends.
``keep_periodic`` also keeps each periodic one as ``step0000020.ckpt``. The best-by-metric
checkpoint stays ModelCheckpoint's job (conf/checkpoint); pre-emption saves through
:mod:`callbacks.preemption`.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_sr.systems.checkpoint_io import remove_orphans


class LastCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None, keep_periodic: bool = False) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every = every_n_train_steps
        self.keep_periodic = bool(keep_periodic)
        self._saved_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            remove_orphans(self.dirpath)  # temporary files of a save killed half-way

    def _save(self, trainer: L.Trainer) -> None:
        if self._saved_step == trainer.global_step or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state, to resume
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and self._saved_step != step:
            self._save(trainer)
            if self.keep_periodic:
                trainer.save_checkpoint(self.dirpath / f"step{step:07d}.ckpt", weights_only=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._save(trainer)
