"""Exports the trained adapters when training ends (see :mod:`lit_sr.model.export`)."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from lit_sr.model.export import export_adapter

log = logging.getLogger(__name__)


class AdapterExport(L.Callback):
    """Writes ``out_dir`` when fitting ends (``enabled=False``: nothing, e.g. ``export.enabled=false``)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = bool(enabled)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if k.startswith(("val/", "curve/hypervolume")) and v.numel() == 1}
            path = export_adapter(pl_module.generator, self.out_dir, pl_module.config, metrics=metrics)
            log.info("exported adapter to %s", path)
