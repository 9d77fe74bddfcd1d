"""Multi-process training on CPU (gloo): what only several ranks do — per-rank noise state across a resume."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DDP2 = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
FAST = ["trainer.enable_progress_bar=false", "data.epoch_size=16", "data.batch_size=2", "data.crop_size=32",
        "val.metrics=[psnr]", "trainer.val_check_interval=1000", "val.num_sample_images=0",
        "callbacks=default", "export.enabled=false", "noise=rgpa"]


def train(run_dir: Path, *args: str, env: dict | None = None) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"run_dir={run_dir}", *FAST, *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def rng_states(ckpt: Path) -> list[torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["lit_sr"]["noise_rng_ranks"]


@pytest.mark.slow
def test_each_rank_resumes_its_own_noise_stream(tmp_path):
    every3 = ["checkpoint.last.every_n_train_steps=3", "checkpoint.last.keep_periodic=true", "trainer.max_steps=6"]
    straight = tmp_path / "straight"
    train(straight, *DDP2, *every3)
    step3 = straight / "checkpoints" / "step0000003.ckpt"
    assert len(rng_states(step3)) == 2
    resumed = tmp_path / "resumed"
    train(resumed, *DDP2, *every3, f"ckpt_path={step3}")
    a, b = rng_states(straight / "checkpoints" / "last.ckpt"), rng_states(resumed / "checkpoints" / "last.ckpt")
    assert not torch.equal(b[0], b[1])  # the ranks still draw different noise after the resume
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # and each rank's stream went on as if never stopped
