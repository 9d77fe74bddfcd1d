"""Callbacks that signal their own training process at a chosen moment (used by tests/test_reliability.py
through ``callbacks.*._target_`` overrides of a ``train.py`` subprocess)."""
from __future__ import annotations

import os
import signal

import lightning as L

from callbacks.adapter_export import AdapterExport


class SignalDuringExport(AdapterExport):
    """The export, with SIGTERM arriving after its temporary folder is written and before it is swapped in."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lit_sr.model import export

        real = export._swap_in

        def swap_in(new, target):
            os.kill(os.getpid(), signal.SIGTERM)
            real(new, target)

        export._swap_in = swap_in
        try:
            super().on_fit_end(trainer, pl_module)
        finally:
            export._swap_in = real


class SignalAtFinalValidation(L.Callback):
    """SIGTERM at the start of the validation run after the last training step."""

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.global_step >= trainer.max_steps:
            os.kill(os.getpid(), signal.SIGTERM)
