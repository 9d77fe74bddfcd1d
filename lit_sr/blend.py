"""Blend two endpoint images (IFCSR fidelity/realism) with a γ or a per-pixel γ map, at zero model cost.

    python -m lit_sr.blend --fidelity sr/a_g0.png --realism sr/a_g1.png --gamma 0.3 --output a_g0.3.png
    python -m lit_sr.blend --fidelity sr/a_g0.png --realism sr/a_g1.png --gamma-map map.png --output a_region.png

The 8-bit rule is the studio page's (:func:`lit_sr.model.blend.blend_uint8`), so a result exported
from the page is reproduced to the bit from the two endpoint PNGs and the exported γ map (an 8-bit
grayscale PNG, value g meaning γ = g / 255). ``lit-sr-infer --gamma 0 1`` writes the endpoints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lit_sr.cli import run_main
from lit_sr.errors import LitSRError
from lit_sr.model.blend import blend_uint8


def read_rgb8(path: str | Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                raise LitSRError(f"{what} {path}: expected an 8-bit RGB image (an endpoint PNG), got mode {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise LitSRError(f"{what} {path}: cannot read ({str(exc).splitlines()[0]})") from None


def read_gamma_map(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An 8-bit grayscale γ map (H×W uint8, g / 255); ``size`` = (H, W) it must have."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "1"):
                raise LitSRError(f"--gamma-map {path}: expected an 8-bit grayscale PNG (γ = value / 255), got mode {img.mode}")
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise LitSRError(f"--gamma-map {path}: cannot read ({str(exc).splitlines()[0]})") from None
    if size is not None and arr.shape != tuple(size):
        raise LitSRError(f"--gamma-map {path} is {arr.shape[1]}x{arr.shape[0]}, the images are {size[1]}x{size[0]}")
    return arr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_sr.blend", description=__doc__.split("\n\n")[0])
    p.add_argument("--fidelity", required=True, help="the fidelity endpoint image (γ = 0)")
    p.add_argument("--realism", required=True, help="the realism endpoint image (γ = 1)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--gamma", type=float, help="one γ in [0, 1] for every pixel")
    g.add_argument("--gamma-map", help="8-bit grayscale PNG: γ per pixel (value / 255), e.g. exported by the studio")
    p.add_argument("--output", required=True, help="output PNG")
    args = p.parse_args(argv)

    def body() -> None:
        fid, real = read_rgb8(args.fidelity, "--fidelity"), read_rgb8(args.realism, "--realism")
        if fid.shape != real.shape:
            raise LitSRError(f"the endpoints differ in size: {fid.shape[1]}x{fid.shape[0]} vs {real.shape[1]}x{real.shape[0]}")
        gamma = read_gamma_map(args.gamma_map, fid.shape[:2]) if args.gamma_map else args.gamma
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blend_uint8(fid, real, gamma)).save(out)
        print(f"wrote {out}")

    return run_main(body, (LitSRError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
