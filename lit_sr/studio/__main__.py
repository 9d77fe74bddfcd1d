"""The fidelity–realism page of a trained model on one photo: every model call happens here, once.

    python -m lit_sr.studio --model runs/ifcsr/adapter --input photo.png --out page/
    lit-sr-studio --model runs/default/adapter --input photo.png --out page/ --knobs 50 100 200 400

Writes ``page/<photo>.html`` — one self-contained file (no server, no CDN, works from file://) in
which the control is dragged with zero network and zero model calls:

* endpoint models (IFCSR): the two endpoint images; the γ slider and the γ-map brush blend them;
* timestep models (RGPA, LDG, …): the outputs at a grid of knob values; the slider scrubs them;
* both (an endpoint model whose noise strategy has a knob): a t × γ pad.

For endpoint models it also writes ``<photo>_fidelity.png`` and ``<photo>_realism.png``: with a γ
map exported from the page, ``python -m lit_sr.blend --fidelity … --realism … --gamma-map map.png``
reproduces the page's exported result to the bit.
"""
from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from datamodules.imageio import load_image, save_image, to_uint8
from lit_sr.cli import run_main
from lit_sr.config.loading import load_generator
from lit_sr.errors import ImageLoadError, LitSRError
from lit_sr.metrics.sweep import seeded
from lit_sr.pipeline import usable_device
from lit_sr.studio.page import write_page

log = logging.getLogger("lit_sr.studio")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lit-sr-studio", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="adapter export folder or Lightning checkpoint")
    p.add_argument("--input", required=True, help="one LQ image")
    p.add_argument("--out", required=True, help="output folder for the page (and the endpoint PNGs)")
    p.add_argument("--knobs", nargs="+", default=None, help="knob values to precompute (default: the strategy's sweep)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise some strategies draw at inference")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (backbone.path=...)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    src, out = Path(args.input), Path(args.out)
    try:
        lq = load_image(src)[None]
    except ImageLoadError as exc:
        raise LitSRError(str(exc)) from None
    generator, _ = load_generator(args.model, list(args.set))
    noise = generator.noise
    if not noise.has_knob and not generator.has_endpoints:
        raise LitSRError(f"{args.model} has no fidelity-realism control to show: its noise strategy "
                         f"({type(noise).__name__}) has no knob and it has no endpoints")
    device = usable_device(args.device)  # one line, not a traceback, for a device this machine lacks
    generator.to(device).eval()
    lq = lq.to(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    knobs = [None]
    if noise.has_knob:
        knobs = sorted({noise.parse_knob(k) for k in (args.knobs or noise.knob_values())})
        bad = [k for k in knobs if isinstance(k, str)]
        if bad:
            raise LitSRError(f"the page needs numeric knob values; {bad[0]!r} is not one (give --knobs as numbers)")
    images: dict = {}
    with torch.no_grad(), autocast:
        for knob in knobs:
            with seeded(args.seed, device):  # the same noise for every knob value: only the knob differs
                if generator.has_endpoints:
                    images[knob] = tuple(to_uint8(x[0]) for x in generator.endpoints(lq, knob))
                else:
                    images[knob] = to_uint8(generator(lq, knob)[0])
            log.info("computed knob %s", knob)
    before = to_uint8(generator.upsample(lq)[0])
    stem = src.stem
    meta = {"model": str(args.model), "input": src.name, "strategy": type(noise).__name__}
    kwargs: dict = {}
    if not noise.has_knob:
        kwargs["endpoints"] = images[None]
    elif generator.has_endpoints:
        kwargs["knob_endpoints"] = [(str(k), float(k), *images[k]) for k in knobs]
    else:
        kwargs["knob_images"] = [(str(k), float(k), images[k]) for k in knobs]
    if generator.has_endpoints:
        fid, real = images[knobs[len(knobs) // 2]] if noise.has_knob else images[None]
        out.mkdir(parents=True, exist_ok=True)
        save_image(torch.from_numpy(fid).permute(2, 0, 1).float() / 255, out / f"{stem}_fidelity.png")
        save_image(torch.from_numpy(real).permute(2, 0, 1).float() / 255, out / f"{stem}_realism.png")
    page = write_page(out / f"{stem}.html", before=before, title=f"lit_sr studio: {src.name}", meta=meta, **kwargs)
    log.info("wrote %s", page)
    return page


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), (LitSRError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
