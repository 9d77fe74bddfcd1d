"""Train a one-step super-resolver: compose config → seed → data, system, callbacks, loggers, trainer → fit.

    python train.py                                   # CPU default: tiny backbone, bundled photos
    python train.py noise=uniform trainer.max_steps=20 data.batch_size=2
    python train.py experiment=osediff backbone=sd21 backbone.path=/models/sd-2-1-base trainer=gpu
"""
from __future__ import annotations

import sys

import lightning as L
import torch

from lit_sr.cli import run_main
from lit_sr.config.build import build_callbacks, build_datamodule, build_loggers, trainer_kwargs
from lit_sr.config.compose import compose
from lit_sr.config.systems import build_system


def run(overrides: list[str]) -> L.Trainer:
    cfg = compose(overrides)  # every config problem fails here, before anything is built
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    system = build_system(cfg)  # the heavy part: backbone and generator
    trainer = L.Trainer(**trainer_kwargs(cfg, system), callbacks=callbacks, logger=loggers or False,
                        default_root_dir=cfg.run_dir, use_distributed_sampler=True)
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return trainer


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
