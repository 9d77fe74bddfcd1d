"""Exports the trained adapters when training ends (see :mod:`lit_sr.model.export`)."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from lit_sr.errors import LitSRError
from lit_sr.model.export import export_adapter
from lit_sr.systems.checkpoint_io import remove_orphans

log = logging.getLogger(__name__)


class AdapterExport(L.Callback):
    """Writes ``out_dir`` when fitting ends (``enabled=False``: nothing, e.g. ``export.enabled=false``).

    At the start it removes what an export killed half-way left next to ``out_dir`` (its
    ``.<name>.tmp-<pid>`` folder, see :func:`~lit_sr.systems.checkpoint_io.remove_orphans`).
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = bool(enabled)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            remove_orphans(self.out_dir.parent)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if k.startswith(("val/", "curve/hypervolume")) and v.numel() == 1}
            try:
                path = export_adapter(pl_module.generator, self.out_dir, pl_module.config, metrics=metrics)
            except OSError as exc:  # disk full: the previous export (if any) is untouched, no half folder left
                reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
                raise LitSRError(f"cannot write the export {self.out_dir}: {reason} (the checkpoints are intact; "
                                 "free space and resume with ckpt_path=last to export)") from exc
            log.info("exported adapter to %s", path)
