"""End-to-end training runs through train.py (single process and 2-process CPU DDP)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAST = ["trainer.enable_progress_bar=false", "data.epoch_size=8", "data.batch_size=2", "val.metrics=[psnr]",
        "trainer.log_every_n_steps=1"]


def _train(run_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"run_dir={run_dir}", *FAST, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_short_run_writes_checkpoint_adapter_samples_metrics(tmp_path):
    _train(tmp_path, "trainer.max_steps=4", "trainer.val_check_interval=2")
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "metrics.json").exists()
    assert list((tmp_path / "samples").rglob("*.png"))
    # checkpoints hold the trainable state only (a few MB, not the backbone)
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_size < 20e6


@pytest.mark.slow
def test_two_process_cpu_ddp_trains_and_saves_one_checkpoint(tmp_path):
    """Also LDG's data-derived groups under DDP: calibration values and group counts gathered over ranks."""
    proc = _train(tmp_path, "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.devices=2",
                  "trainer.strategy=ddp", "noise=ldg", "noise.grouping=quantile", "data.epoch_size=12")
    assert "noise calibration over 12 training samples" in proc.stderr  # both ranks' six
    assert "sync_dist" not in proc.stderr
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    assert len([c for c in ckpts if c != "last.ckpt"]) == 1  # one best checkpoint, written by rank 0 only
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len({row["step"] for row in rows if row.get("train/loss")}) == 3
    shares = [[float(r[f"noise/group_t{t}"]) for t in (250, 500, 750)] for r in rows if r.get("noise/group_t250")]
    assert shares and all(abs(sum(s) - 1) < 1e-6 for s in shares)
    edges = yaml.safe_load((tmp_path / "adapter" / "config.yaml").read_text())["noise"]["edges"]
    assert len(edges) == 2 and edges == sorted(edges)


@pytest.mark.slow
def test_two_process_cpu_ddp_with_a_vsd_term_under_plain_ddp(tmp_path):
    """VSD's fake LoRA is not reached by the generator's backward: `strategy=ddp` must still work."""
    _train(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.devices=2",
           "trainer.strategy=ddp", "export.enabled=false", "loss=osediff_vsd", "loss.terms.lpips.weight=0")
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
