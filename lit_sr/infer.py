"""Super-resolve a file or a folder with a trained model.

    python -m lit_sr.infer --model runs/default/adapter --input photos/ --output sr/ [--knob 100]
    lit-sr-infer --model run.ckpt --input img.png --output out/ --gamma 0 0.5 1 --precision bf16

``--knob`` sets the noise strategy's fidelity-realism knob (t, or a preset such as ``fidelity``;
``uniform`` has none and ignores it). ``--gamma`` blends the fidelity/realism endpoints of IFCSR
models: any number of values costs two generator passes per image. Unreadable files are reported
and skipped; the rest continue.
"""
from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from datamodules.imageio import is_image_path, load_image, save_image
from lit_sr.cli import run_main
from lit_sr.config.loading import load_generator
from lit_sr.errors import ImageLoadError, LitSRError
from lit_sr.model.blend import blend_many
from lit_sr.model.colorfix import COLOR_FIXES, color_fix

log = logging.getLogger("lit_sr.infer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lit-sr-infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="adapter export folder or Lightning checkpoint")
    p.add_argument("--input", required=True, help="image file or folder (searched recursively)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    p.add_argument("--knob", default=None, help="fidelity-realism knob of the noise strategy (t or preset)")
    p.add_argument("--gamma", type=float, nargs="+", default=None, help="IFCSR blend weight(s) in [0, 1]")
    p.add_argument("--tile", type=int, default=None, help="latent tile size (latent pixels) for large images")
    p.add_argument("--tile-overlap", type=int, default=8, help="latent tile overlap")
    p.add_argument("--color-fix", choices=sorted(COLOR_FIXES), default="none", help="match the LQ colours")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. backbone.path=/models/sd-2-1-base")
    return p.parse_args(argv)


def list_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    raise LitSRError(f"input not found: {path}")


def run(args: argparse.Namespace) -> dict:
    overrides = list(args.set)
    if args.scale is not None:
        overrides.append(f"model.scale={args.scale}")
    generator, _ = load_generator(args.model, overrides)
    generator.tile_latent, generator.tile_overlap = args.tile, args.tile_overlap
    device = torch.device(args.device)
    generator.to(device)
    knob = generator.noise.parse_knob(args.knob)
    if args.gamma is not None and not generator.has_endpoints:
        raise LitSRError("--gamma needs a model with fidelity/realism endpoints (IFCSR)")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    src, out_dir = Path(args.input), Path(args.output)
    stats = {"written": 0, "skipped": 0}
    for path in list_inputs(src):
        rel = path.relative_to(src) if src.is_dir() else Path(path.name)
        if not is_image_path(path):
            log.warning("skipping %s: not an image file", path)
            stats["skipped"] += 1
            continue
        try:
            lq = load_image(path)[None].to(device)
        except ImageLoadError as exc:
            log.warning("skipping %s", exc)
            stats["skipped"] += 1
            continue
        batch = {"path": [str(path)]}  # per-image prompts (text conditioning with a prompt file)
        with torch.no_grad(), autocast:
            if args.gamma is not None:
                x_fid, x_real = generator.endpoints(lq, knob, batch)
                outputs = {f"_g{g:g}": img for g, img in zip(args.gamma, blend_many(x_fid, x_real, args.gamma))}
            else:
                outputs = {"": generator(lq, knob, batch)}
        for suffix, sr in outputs.items():
            sr = color_fix(sr.float(), generator.upsample(lq).float(), args.color_fix)
            save_image(sr[0], out_dir / rel.with_name(rel.stem + suffix + ".png"))
            stats["written"] += 1
    log.info("wrote %d images to %s; skipped %d", stats["written"], out_dir, stats["skipped"])
    return stats


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), (LitSRError, ValueError))  # ValueError: bad knob/gamma


if __name__ == "__main__":
    sys.exit(main())
