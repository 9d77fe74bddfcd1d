"""Exports the trained adapters when training ends (see :mod:`lit_sr.model.export`)."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from lit_sr.model.export import export_adapter

log = logging.getLogger(__name__)


class AdapterExport(L.Callback):
    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            path = export_adapter(pl_module.generator, self.out_dir, pl_module.config)
            log.info("exported adapter to %s", path)
