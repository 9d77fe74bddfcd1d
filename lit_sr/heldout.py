"""The honest check of a model trained on the bundled photos: against bicubic, on photos it never saw.

    python -m lit_sr.heldout --model runs/default/adapter [--out runs/default/heldout]

The held-out photos (``datamodules.skimage_photos.VAL_PHOTOS``) are in no training step and not
in the tiny VAE's training. They are written whole (cropped to a multiple of the scale) as HQ
PNGs with their bicubic ×scale LQ (the default's degradation, 8-bit like any photo), then
:mod:`lit_sr.evaluate` scores bicubic and the model at every knob of its sweep (PSNR-Y, SSIM-Y
and ColourShift, the largest per-channel mean colour error in 8-bit levels). Written under
``--out``: ``table.md``, ``table.csv``, ``per_image.csv``, ``verdict.txt`` (one line per knob: on
how many photos the model beats bicubic). Exit status 0 whatever the verdict (it is a report);
2 with one ``error:`` line for a bad model or folder.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lit_sr.cli import run_main
from lit_sr.errors import LitSRError

log = logging.getLogger(__name__)
METRICS = ("psnr", "ssim", "colour")


def write_heldout_pairs(out: Path, scale: int = 4) -> tuple[Path, Path]:
    """HQ/LQ PNG pairs of the held-out photos under ``out/hq`` and ``out/lq``."""
    from datamodules.degradation.bicubic import BicubicDegradation
    from datamodules.skimage_photos import VAL_PHOTOS, photo_array

    hq_dir, lq_dir = out / "hq", out / "lq"
    hq_dir.mkdir(parents=True, exist_ok=True)
    lq_dir.mkdir(parents=True, exist_ok=True)
    degradation = BicubicDegradation(scale=scale)
    for name in VAL_PHOTOS:
        arr = photo_array(name)
        h, w = (arr.shape[0] // scale) * scale, (arr.shape[1] // scale) * scale
        hq = torch.from_numpy(np.array(arr[:h, :w])).permute(2, 0, 1)[None].float() / 255
        lq, _ = degradation.apply(hq, degradation.sample(1, torch.Generator().manual_seed(0)))
        Image.fromarray(arr[:h, :w]).save(hq_dir / f"{name}.png")
        lq8 = (lq[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(lq8).save(lq_dir / f"{name}.png")
    return lq_dir, hq_dir


def verdict(per_image: Path, default: str | None = None) -> list[str]:
    """One line per model row: on how many photos it beats bicubic in PSNR, SSIM and colour (the row of
    the model's inference default knob ``default`` is marked)."""
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    with open(per_image, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            scores[row["row"]][row["image"]][row["metric"]] = float(row["value"])
    base_row = next((r for r in scores if r.split(" ")[0] == "bicubic"), None)  # "bicubic -" with a γ column
    base = scores.pop(base_row, None) if base_row is not None else None
    if base is None:
        raise LitSRError(f"{per_image} has no bicubic row")
    lines = []
    for knob, images in scores.items():
        n = len(images)
        psnr = [images[i]["psnr"] - base[i]["psnr"] for i in images]
        ssim = [images[i]["ssim"] - base[i]["ssim"] for i in images]
        colour = sum(images[i]["colour"] <= base[i]["colour"] + 0.5 for i in images)  # half a level: rounding
        mark = " (the inference default)" if default is not None and knob == default else ""
        lines.append(f"knob {knob}{mark}: PSNR-Y above bicubic on {sum(d > 0 for d in psnr)}/{n} photos "
                     f"(margin {min(psnr):+.2f} … {max(psnr):+.2f} dB), SSIM-Y on {sum(d > 0 for d in ssim)}/{n} "
                     f"({min(ssim):+.4f} … {max(ssim):+.4f}), colour shift within bicubic's +0.5 levels on "
                     f"{colour}/{n}")
    return lines


def default_knob(model: Path) -> str | None:
    """The knob the model runs at when none is given (its noise strategy's default), as evaluate labels it."""
    from lit_sr.config.build import build_component
    from lit_sr.config.loading import load_config

    knob = build_component(load_config(model).noise, "noise").parse_knob(None)
    return None if knob is None else str(knob)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lit-sr-heldout", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="adapter export folder or Lightning checkpoint")
    p.add_argument("--out", default=None, help="report folder (default: <model>/../heldout)")
    p.add_argument("--knobs", nargs="+", default=None, help="knob values (default: the model's sweep)")
    p.add_argument("--scale", type=int, default=4, help="SR factor of the held-out pairs")
    p.add_argument("--decoder", choices=["full", "distilled"], default="full",
                   help="the model's VAE decoder or the one distilled from it (experiment=distill_vae)")
    p.add_argument("--encoder", choices=["full", "distilled"], default="full",
                   help="the model's VAE encoder or the one distilled from it")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[str]:
    import os

    from lit_sr import evaluate

    torch.set_num_threads(os.cpu_count() or 1)  # whole photos at several knobs: every core helps
    model = Path(args.model)
    if not model.exists():
        raise LitSRError(f"--model: {model} not found")
    out = Path(args.out) if args.out else model.resolve().parent / "heldout"
    lq_dir, hq_dir = write_heldout_pairs(out, args.scale)
    eval_args = ["--model", str(model), "--lq-dir", str(lq_dir), "--hq-dir", str(hq_dir), "--baseline",
                 "--metrics", *METRICS, "--device", "cpu", "--out", str(out / "table.md"),
                 "--csv", str(out / "table.csv"), "--per-image", str(out / "per_image.csv")]
    if args.knobs:
        eval_args += ["--knobs", *args.knobs]
    eval_args += ["--decoder", args.decoder, "--encoder", args.encoder]
    table = evaluate.evaluate(evaluate.parse_args(eval_args))
    text = table.markdown()
    for path, content in ((out / "table.md", text), (out / "table.csv", table.csv())):
        path.write_text(content, encoding="utf-8")
    lines = verdict(out / "per_image.csv", default_knob(model))
    (out / "verdict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(text, end="")
    for line in lines:
        print(line)
    log.info("held-out report in %s", out)
    return lines


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), (LitSRError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
