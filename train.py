"""Train a one-step super-resolver: compose config → seed → data, system, callbacks, loggers, trainer → fit.

    python train.py                                   # CPU default: tiny backbone, bundled photos
    python train.py noise=uniform trainer.max_steps=20 data.batch_size=2
    python train.py experiment=osediff backbone=sd21 backbone.path=/models/sd-2-1-base trainer=gpu
    python train.py ckpt_path=last                    # resume the run in run_dir (or start it)
    python train.py --help                            # config groups and their choices
    python train.py experiment=codsr --cfg            # print the composed config
"""
from __future__ import annotations

import sys
import warnings
from contextlib import nullcontext

import lightning as L
import torch

from lit_sr.cli import run_main
from lit_sr.config.build import build_callbacks, build_datamodule, build_loggers, trainer_kwargs
from lit_sr.config.compose import compose
from lit_sr.config.run import RunLock, is_launch_rank_zero, resolve_ckpt_path
from lit_sr.config.systems import build_system
from lit_sr.systems.checkpoint_io import AtomicCheckpointIO
from lit_sr.systems.loggers import RunCSVLogger


def plugins() -> list:
    """Atomic checkpoint files; under SLURM, the requeue is left to the pre-emption callback."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    out: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        out.append(SLURMEnvironment(auto_requeue=False))
    return out


def run(overrides: list[str]) -> L.Trainer:
    cfg = compose(overrides)  # every config problem fails here, before anything is built
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    ckpt_path, resume_step = resolve_ckpt_path(cfg.ckpt_path, cfg.run_dir)
    if ckpt_path:  # a resume writes into its own checkpoint folder on purpose: Lightning's notice says nothing new
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # Both data modules resume mid-epoch through their samplers, which Lightning's check cannot see.
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    lock = RunLock(cfg.run_dir, cfg.job_id, cfg.run_lock_ttl) if cfg.run_lock and is_launch_rank_zero() \
        else nullcontext()
    with lock:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        datamodule = build_datamodule(cfg)
        datamodule.check()  # an empty folder or only unusable images: one line, before the model
        loggers = build_loggers(cfg)
        for logger in loggers:
            if ckpt_path and isinstance(logger, RunCSVLogger):
                logger.resume_at(resume_step)
        callbacks = build_callbacks(cfg)
        system = build_system(cfg)  # the heavy part: backbone and generator
        trainer = L.Trainer(**trainer_kwargs(cfg, system), callbacks=callbacks, logger=loggers or False,
                            plugins=plugins(), default_root_dir=cfg.run_dir, use_distributed_sampler=False)
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        from lit_sr.config.usage import usage_text

        print(usage_text())
        return 0
    if "--cfg" in args:  # the composed config, after every override and interpolation
        from omegaconf import OmegaConf

        return run_main(lambda: print(OmegaConf.to_yaml(compose([a for a in args if a != "--cfg"])), end=""))
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
