"""Writes the distilled export when fitting ends (``experiment=distill_vae``).

The new export is the trained generator's (its folder copied; a checkpoint is exported first)
plus ``distilled_vae.safetensors``, with the manifest and the model card saying which parts are
distilled, their FLOPs against the full parts and the last validation numbers
(:func:`lit_sr.model.distilled.save_distilled`).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L

from lit_sr.errors import LitSRError
from lit_sr.model.distilled import part_flops, save_distilled
from lit_sr.model.export import export_adapter

log = logging.getLogger(__name__)


class DistillExport(L.Callback):
    """Copies the generator's export to ``out_dir`` and adds the distilled parts to it."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if Path(pl_module.source).resolve() == self.out_dir.resolve():  # before training, not after it
            raise LitSRError(f"distill.out_dir must differ from the generator's export {pl_module.source}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out, generator, source = self.out_dir, pl_module.generator, Path(pl_module.source)
        tmp = out.with_name(f".{out.name}.distill-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, tmp)
        else:  # a checkpoint: export the generator with its stored config
            export_adapter(generator, tmp, pl_module.source_config)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        report = {}
        for name, student in pl_module.students().items():
            checks = {k.removeprefix("val/"): v for k, v in metrics.items()
                      if k.startswith(f"val/{name}_") or k == "val/sr_psnr"}
            report[name] = {"flops_512": {"full": part_flops(generator, name), "distilled": part_flops(generator, name, student)},
                            "val": checks, "steps": int(trainer.global_step), "source": str(source),
                            "knobs": [str(k) for k in pl_module.knobs]}
        save_distilled(tmp, pl_module.students(), report)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log.info("wrote the distilled export %s (%s)", out, ", ".join(report))
