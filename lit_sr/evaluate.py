"""Evaluate a trained model (or a folder of SR outputs) on a paired set: the paper-style table.

    lit-sr-evaluate --model runs/x/adapter --lq-dir RealSR/LR --hq-dir RealSR/HR --knobs 100 200 300
    lit-sr-evaluate --model ifcsr.ckpt --lq-dir LQ --hq-dir HQ --gammas 0 0.5 1 --out table.md
    lit-sr-evaluate --sr-dir results/ours results/osediff --hq-dir HQ --metrics psnr ssim niqe

One row per knob setting (or per SR folder), one column per metric with its direction arrow
(PSNR↑ SSIM↑ ColourShift↓ LPIPS↓ DISTS↓ NIQE↓ MUSIQ↑ MANIQA↑ CLIPIQA↑). Metrics that cannot give calibrated
numbers here (weights or backend missing, or no HQ for a full-reference one) are left out and
named once in a note line. The table is printed as Markdown and written with ``--out`` (Markdown)
and ``--csv``.

The knob sweep and its score sums come from :mod:`lit_sr.metrics.sweep`, shared with the
fidelity–realism curve callback.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

from lit_sr.autotile import DEFAULT_AUTO_TILE, auto_tiled
from lit_sr.cli import run_main
from lit_sr.errors import LitSRError
from lit_sr.metrics.suite import METRIC_NAMES, MetricSuite, MetricWeights
from lit_sr.metrics.sweep import DEFAULT_GAMMAS, KnobSweep, SweepScores, seed_for, seeded
from lit_sr.metrics.table import LABELS, Table
from lit_sr.metrics.trend import sweep_trends, trend_lines
from lit_sr.pipeline import usable_device

log = logging.getLogger("lit_sr.evaluate")

FULL_REFERENCE = frozenset({"psnr", "ssim", "colour", "lpips", "dists"})


# ------------------------------------------------------------------------------ data

def _folder_items(root: Path) -> Iterator[dict]:
    """Items ``{"lq": image, "name": stem}`` of every image under ``root`` (no HQ)."""
    from datamodules.file_index import index_images
    from datamodules.imageio import load_image

    base = root.expanduser().resolve()
    for path in index_images([root]):
        rel = path.relative_to(base).with_suffix("").as_posix()
        yield {"lq": load_image(path), "name": rel}


def _paired(lq_root: Path, hq_root: Path, scale: int, layout: str, lq_pattern: str | None,
            hq_pattern: str | None):
    from datamodules.paired import PairedFolderDataset

    try:
        return PairedFolderDataset(lq_root, hq_root, scale, layout=layout, lq_pattern=lq_pattern, hq_pattern=hq_pattern)
    except FileNotFoundError as exc:
        raise LitSRError(f"folder not found: {exc.filename or exc}") from None
    except ValueError as exc:
        raise LitSRError(str(exc).splitlines()[0]) from None


def _check_dir(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise LitSRError(f"{flag}: folder not found: {p}")
    return p


# ------------------------------------------------------------------------------ CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lit-sr-evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="adapter export folder or Lightning checkpoint")
    src.add_argument("--sr-dir", nargs="+", help="folder(s) of SR outputs, matched to --hq-dir by name (one row each)")
    p.add_argument("--lq-dir", help="LQ images (--model mode)")
    p.add_argument("--hq-dir", help="HQ images (without: no-reference metrics only)")
    p.add_argument("--layout", choices=["same_name", "realsr", "drealsr"], default="same_name",
                   help="how LQ (or SR) and HQ file names pair up (see datamodules/paired.py)")
    p.add_argument("--lq-pattern", default=None, help="regex for LQ/SR file stems; group 'key' names the pair")
    p.add_argument("--hq-pattern", default=None, help="regex for HQ file stems; group 'key' names the pair")
    p.add_argument("--scale", type=int, default=None,
                   help="SR factor (default: the model's; 4 with --sr-dir); default border crop of PSNR/SSIM")
    p.add_argument("--knobs", nargs="+", default=None,
                   help="knob values (t or presets) to evaluate (default: the noise strategy's sweep)")
    p.add_argument("--gammas", type=float, nargs="+", default=None,
                   help=f"blend weights for endpoint (IFCSR) models (default: {list(DEFAULT_GAMMAS)})")
    p.add_argument("--metrics", nargs="+", default=list(METRIC_NAMES), metavar="NAME",
                   help=f"metrics, from {', '.join(METRIC_NAMES)} (default: all)")
    p.add_argument("--vgg-weights", default=None, help="torchvision VGG16 file (LPIPS, DISTS)")
    p.add_argument("--lpips-weights", default=None, help="lpips v0.1 vgg.pth")
    p.add_argument("--dists-weights", default=None, help="DISTS weights.pt")
    p.add_argument("--pyiqa-weights-dir", default=None, help="local pyiqa checkpoints (MUSIQ, MANIQA, CLIPIQA)")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="score LPIPS/DISTS with random weights when files are missing (uncalibrated; marked in the title)")
    p.add_argument("--crop-border", type=int, default=None, help="PSNR/SSIM border crop (default: the scale)")
    ych = p.add_mutually_exclusive_group()
    ych.add_argument("--y-channel", dest="y_channel", action="store_true", default=True,
                     help="PSNR/SSIM on the BT.601 Y channel (default)")
    ych.add_argument("--rgb", dest="y_channel", action="store_false", help="PSNR/SSIM on RGB")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise some strategies draw at inference (drawn per image and setting)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--tile", type=int, default=None, help="latent tile size for large images")
    p.add_argument("--decoder", choices=["full", "distilled"], default="full",
                   help="--model mode: the model's VAE decoder or the one distilled from it (experiment=distill_vae)")
    p.add_argument("--encoder", choices=["full", "distilled"], default="full",
                   help="--model mode: the model's VAE encoder or the one distilled from it")
    p.add_argument("--auto-tile", type=int, default=None, metavar="LATENT_PIXELS",
                   help="tile images whose latent has more pixels than this, as lit-sr-infer does (default: off, "
                        f"scores are of the untiled model; lit-sr-infer's default is {DEFAULT_AUTO_TILE})")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. backbone.path=/models/sd-2-1-base")
    p.add_argument("--baseline", action="store_true",
                   help="--model mode: add a 'bicubic' row first (the LQ upsampled bicubically, scored alike)")
    p.add_argument("--per-image", default=None, metavar="CSV",
                   help="write every image's score per row and metric here (row, image, metric, value); "
                        "metric t: the timestep the image ran at (knob adaptive: chosen per image)")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    p.add_argument("--csv", default=None, help="write the table as CSV here")
    return p.parse_args(argv)


def _suite(args: argparse.Namespace, scale: int, has_hq: bool, device: torch.device) -> tuple[MetricSuite, dict[str, str]]:
    names = list(dict.fromkeys(args.metrics))
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise LitSRError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    skipped = {n: f"{LABELS[n]} needs HQ images (--hq-dir)" for n in names if n in FULL_REFERENCE and not has_hq}
    weights = MetricWeights(vgg=args.vgg_weights, lpips=args.lpips_weights, dists=args.dists_weights,
                            pyiqa_dir=args.pyiqa_weights_dir, allow_random=args.allow_random_weights)
    suite = MetricSuite([n for n in names if n not in skipped], scale=scale, crop_border=args.crop_border,
                        y_channel=args.y_channel, weights=weights).to(device).eval()
    unavailable = {**suite.unavailable, **skipped}
    return suite, {n: unavailable[n] for n in names if n in unavailable}


def _random_weight_metrics(args: argparse.Namespace, suite: MetricSuite) -> list[str]:
    """Metrics that run on random weights because --allow-random-weights filled a missing file."""
    if not args.allow_random_weights:
        return []
    needs = {"lpips": (args.vgg_weights, args.lpips_weights), "dists": (args.vgg_weights, args.dists_weights)}
    return [n.upper() for n, files in needs.items() if n in suite.names and None in files]


def _describe(suite: MetricSuite, args: argparse.Namespace, what: str, count: int) -> str:
    crop = args.crop_border
    protocol = "Y" if args.y_channel else "RGB"
    title = f"lit_sr evaluation: {what}, {count} image{'s' if count != 1 else ''}"
    if any(n in suite.names for n in ("psnr", "ssim")):
        title += f" (PSNR/SSIM on {protocol}, border crop {crop})"
    random = _random_weight_metrics(args, suite)
    if random:
        title += f" — UNCALIBRATED: {'/'.join(random)} with random weights"
    return title


def evaluate(args: argparse.Namespace) -> Table:
    """Run the evaluation described by parsed CLI arguments; returns the table."""
    device = usable_device(args.device)  # one line, not a traceback, for a device this machine lacks
    hq_dir = _check_dir(args.hq_dir, "--hq-dir")
    for flag, value in (("--max-images", args.max_images), ("--tile", args.tile), ("--auto-tile", args.auto_tile)):
        if value is not None and value < 1:
            raise LitSRError(f"{flag} must be >= 1, got {value}")
    if args.sr_dir is not None:
        if args.lq_dir or args.knobs or args.gammas or args.set:
            raise LitSRError("--lq-dir, --knobs, --gammas and --set only apply with --model")
        return _evaluate_folders(args, [_check_dir(d, "--sr-dir") for d in args.sr_dir], hq_dir, device)
    lq_dir = _check_dir(args.lq_dir, "--lq-dir")
    if lq_dir is None:
        raise LitSRError("--model needs --lq-dir (and --hq-dir for full-reference metrics)")
    return _evaluate_model(args, lq_dir, hq_dir, device)


def _limit(items: Iterable[dict], n: int | None) -> Iterator[dict]:
    for i, item in enumerate(items):
        if n is not None and i >= n:
            return
        yield item


def _evaluate_model(args: argparse.Namespace, lq_dir: Path, hq_dir: Path | None, device: torch.device) -> Table:
    from lit_sr.config.loading import load_generator

    overrides = list(args.set) + ([f"model.scale={args.scale}"] if args.scale is not None else [])
    overrides += [f"model.tile_latent={args.tile}"] if args.tile is not None else []  # checked like the config's
    generator, _ = load_generator(args.model, overrides, decoder=args.decoder, encoder=args.encoder)
    generator.to(device).eval()
    sweep = KnobSweep.for_generator(generator, args.knobs, args.gammas)
    scale = generator.scale
    args.crop_border = scale if args.crop_border is None else args.crop_border
    suite, unavailable = _suite(args, scale, hq_dir is not None, device)
    data = (_paired(lq_dir, hq_dir, scale, args.layout, args.lq_pattern, args.hq_pattern)
            if hq_dir is not None else _folder_items(lq_dir))
    points = sweep.points
    first = 1 if args.baseline else 0  # row 0: bicubic upsampling of the LQ
    scores = SweepScores(suite, first + len(points))
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    count = 0
    timesteps: list[tuple[int, str, int]] = []  # (row, image, t) for the per-image CSV
    per_knob = len(points) // len(sweep.knobs)
    with torch.no_grad():
        for item in _limit(data, args.max_images):
            lq = item["lq"][None].to(device)
            hq = item["hq"][None].to(device) if "hq" in item else None
            if args.baseline:
                scores.add(0, generator.upsample(lq.float()), hq, item["name"])
            chosen = []
            h, w = lq.shape[-2] * generator.scale, lq.shape[-1] * generator.scale
            for k, knob in enumerate(sweep.knobs):
                # One seed per (image, setting): a setting's noise does not depend on what ran before it.
                with autocast, seeded(seed_for(args.seed, item["name"], knob), device), \
                        auto_tiled(generator, h, w, args.auto_tile):
                    outputs, t = sweep.run_knob(generator, lq, knob, {"name": [item["name"]]})
                for j, sr in enumerate(outputs):
                    scores.add(first + k * per_knob + j, sr.float(), hq, item["name"])
                    timesteps.append((first + k * per_knob + j, item["name"], int(t[0])))
                chosen.append(f"{points[k * per_knob].knob_text}: t={int(t[0])}")
            count += 1
            log.info("evaluated %s (%d; %s)", item["name"], count, ", ".join(chosen))
    if count == 0:
        raise LitSRError(f"no images found under {lq_dir}")
    means = scores.means()
    key_columns = ["knob"] + (["γ"] if sweep.gammas is not None else [])
    labels = [[p.knob_text] + ([f"{p.gamma:g}"] if p.gamma is not None else []) for p in points]
    if args.baseline:
        labels.insert(0, ["bicubic"] + (["-"] if sweep.gammas is not None else []))
    rows = list(zip(labels, means))
    what = f"model {args.model} on {hq_dir or lq_dir}"
    table = _table(suite, args, what, count, key_columns, rows, unavailable)
    table.notes = trend_lines(sweep_trends(points, means[first:], table.metrics), suite.display_names)
    _write_per_image(args, scores, [" ".join(label) for label in labels], timesteps)
    return table


def _evaluate_folders(args: argparse.Namespace, sr_dirs: list[Path], hq_dir: Path | None, device: torch.device) -> Table:
    from datamodules.paired import LAYOUTS

    scale = args.scale or 4
    args.crop_border = scale if args.crop_border is None else args.crop_border
    suite, unavailable = _suite(args, scale, hq_dir is not None, device)
    scores = SweepScores(suite, len(sr_dirs))
    # SR files carry the LQ file's name: pair them with the layout's LQ pattern at SR size (scale 1).
    sr_pattern = args.lq_pattern or LAYOUTS[args.layout][0].replace("{scale}", str(scale))
    hq_pattern = args.hq_pattern or LAYOUTS[args.layout][1]
    counts = []
    with torch.no_grad():
        for i, sr_dir in enumerate(sr_dirs):
            data = (_paired(sr_dir, hq_dir, 1, "same_name", sr_pattern, hq_pattern)
                    if hq_dir is not None else _folder_items(sr_dir))
            n = 0
            for item in _limit(data, args.max_images):
                hq = item["hq"][None].to(device) if "hq" in item else None
                scores.add(i, item["lq"][None].to(device), hq, item["name"])
                n += 1
            if n == 0:
                raise LitSRError(f"no images found under {sr_dir}")
            counts.append(n)
    if len(set(counts)) > 1:  # rows over different image sets are not comparable: say so
        log.warning("the SR folders have different numbers of matched images: %s", counts)
    rows = [([str(d)], m) for d, m in zip(sr_dirs, scores.means())]
    _write_per_image(args, scores, [str(d) for d in sr_dirs])
    what = f"SR folders on {hq_dir}" if hq_dir is not None else "SR folders (no HQ)"
    return _table(suite, args, what, min(counts), ["SR folder"], rows, unavailable)


def _write_per_image(args: argparse.Namespace, scores: SweepScores, row_names: list[str],
                     timesteps: list[tuple[int, str, int]] = ()) -> None:
    """The per-image CSV (csv module: names with commas, quotes or newlines stay one field)."""
    if not args.per_image:
        return
    path = Path(args.per_image)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "image", "metric", "value"])
        writer.writerows([row_names[i], image, metric, f"{value:.6g}"] for i, image, metric, value in scores.records)
        writer.writerows([row_names[i], image, "t", t] for i, image, t in timesteps)


def _table(suite: MetricSuite, args: argparse.Namespace, what: str, count: int, key_columns: list[str],
           rows: list, unavailable: dict[str, str]) -> Table:
    names = [n for n in METRIC_NAMES if n in suite.names]  # the paper's column order
    return Table(title=_describe(suite, args, what, count), key_columns=key_columns, metrics=names,
                 display=suite.display_names, rows=rows, unavailable=unavailable)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = parse_args(argv)
        table = evaluate(args)
        text = table.markdown()
        print(text, end="")
        for path, content in ((args.out, text), (args.csv, table.csv())):
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(content, encoding="utf-8")

    return run_main(body, (LitSRError, ValueError))  # ValueError: bad knob/size values from components


if __name__ == "__main__":
    sys.exit(main())
