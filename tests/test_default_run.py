"""The embedded CPU default, trained as the README's main command trains it, judged against bicubic
on the held-out photos (never in a training step nor in the tiny VAE's training)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_default_clears_bicubic_on_held_out_photos_without_a_colour_cast(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"run_dir={run}",
                           "trainer.enable_progress_bar=false"], capture_output=True, text=True, cwd=ROOT,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads((run / "metrics.json").read_text())["last"]
    assert {"psnr_bicubic", "psnr_margin", "ssim_bicubic", "ssim_margin"} <= set(last)
    assert last["psnr_margin"] == pytest.approx(last["psnr"] - last["psnr_bicubic"], abs=1e-4)
    assert (run / "curve.png").exists() and (run / "curve.csv").exists()
    assert len(list((run / "samples_knobs").rglob("*.png"))) >= 2

    out = tmp_path / "heldout"
    proc = subprocess.run([sys.executable, "-m", "lit_sr.heldout", "--model", str(run / "adapter"), "--out", str(out),
                           "--knobs", "50", "200"], capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    with open(out / "per_image.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            scores[row["row"]][row["metric"]][row["image"]] = float(row["value"])

    def mean(row: str, metric: str) -> float:
        values = scores[row][metric]
        assert len(values) == 3  # chelsea, coffee, grace_hopper
        return sum(values.values()) / len(values)

    # The default knob beats doing nothing on average (README: 28.76 vs 28.36 dB PSNR-Y,
    # 0.7932 vs 0.7840 SSIM-Y).
    assert mean("50", "psnr") > mean("bicubic", "psnr")
    assert mean("50", "ssim") > mean("bicubic", "ssim")
    # No colour cast on any photo: the earlier default was 9-11 levels off; bicubic is about 0.05.
    assert max(scores["50"]["colour"].values()) < 1.0
    assert max(scores["200"]["colour"].values()) < 1.0
    # The knob moves the result: more t, less fidelity.
    assert mean("200", "psnr") < mean("50", "psnr") - 0.3
    assert (out / "verdict.txt").read_text().startswith("knob 50 (the inference default): PSNR-Y above bicubic on ")
