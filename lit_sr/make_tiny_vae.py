"""Train a tiny ×4 VAE recipe and write it where the package ships it (``lit_sr/data/tiny_vae/<key>``).

    python -m lit_sr.make_tiny_vae --latent-channels 16 --steps 8000   # the CPU default's and tiny_sd3's
    python -m lit_sr.make_tiny_vae --latent-channels 4 --steps 1500    # the test backbone's (backbone=tiny)

The shipped folders are what ``backbone=tiny16`` / ``tiny`` / ``tiny_sd3`` load, so a fresh machine
trains no VAE; a recipe that is not shipped is trained on first use and cached instead
(:mod:`lit_sr.model.tiny_vae`). ``--out`` writes elsewhere (the folder must not exist).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from lit_sr.cli import run_main
from lit_sr.errors import LitSRError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lit_sr.make_tiny_vae", description=__doc__.split("\n\n")[0])
    p.add_argument("--latent-channels", type=int, default=16, choices=[4, 16])
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder to write (default: the package's lit_sr/data/tiny_vae/<key>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core; 1 on a busy machine)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    from lit_sr.model.tiny_vae import SHIPPED, recipe_key, train_tiny_vae

    if args.steps < 1:
        raise LitSRError(f"--steps must be at least 1, got {args.steps}")
    key = recipe_key(args.seed, args.steps, args.latent_channels)
    out = Path(args.out).expanduser() if args.out else SHIPPED / key
    if out.exists() and not args.overwrite:
        raise LitSRError(f"{out} exists: use --overwrite or another --out")
    t0 = time.perf_counter()
    vae = train_tiny_vae(args.seed, args.steps, args.latent_channels, threads=args.threads)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"{out} (recipe {key}, {args.steps} steps, {time.perf_counter() - t0:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
