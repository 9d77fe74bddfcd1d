"""Writes the trained MEM estimator when fitting ends (``experiment=mem``)."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from lit_sr.model.mem import save_mem

log = logging.getLogger(__name__)


class MEMExport(L.Callback):
    """Writes the trained estimator (:func:`save_mem`) when fitting ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info("wrote MEM weights to %s", save_mem(pl_module.estimator, self.path))
