"""Train a one-step super-resolver: compose config → seed → data, system, callbacks, trainer → fit.

    python train.py                                   # CPU default: tiny backbone, bundled photos
    python train.py noise=uniform trainer.max_steps=20 data.batch_size=2
    python train.py experiment=osediff backbone=sd21 backbone.path=/models/sd-2-1-base trainer=gpu
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from callbacks.adapter_export import AdapterExport
from callbacks.metrics_file import MetricsFile
from callbacks.sample_images import SampleImages
from lit_sr.config.build import build_datamodule, build_extra_callbacks, build_mem_system, build_system, trainer_kwargs
from lit_sr.config.compose import compose
from lit_sr.errors import LitSRError


def run(overrides: list[str]) -> L.Trainer:
    cfg = compose(overrides)  # every config problem fails here, before anything is built
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    run_dir = Path(cfg.run_dir)
    datamodule = build_datamodule(cfg)
    system = build_mem_system(cfg) if cfg.get("mem") else build_system(cfg)  # experiment=mem trains RCOD's MEM
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0 if cfg.val is None else 1,
                        monitor="val/psnr" if "psnr" in (cfg.val or {}).get("metrics", []) else None, mode="max"),
        MetricsFile(run_dir / "metrics.json"),
        SampleImages(run_dir / "samples", cfg.val.num_sample_images),
        LearningRateMonitor(),
        *build_extra_callbacks(cfg),
    ]
    if cfg.export.enabled:
        callbacks.append(AdapterExport(run_dir / "adapter"))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    loggers = [TensorBoardLogger(run_dir, name="tb", version=""), CSVLogger(run_dir, name="csv", version="")]
    trainer = L.Trainer(**trainer_kwargs(cfg, system), callbacks=callbacks, logger=loggers,
                        default_root_dir=run_dir, use_distributed_sampler=True)
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return trainer


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except LitSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
