"""Super-resolve a file or a folder with a trained model.

    python -m lit_sr.infer --model runs/default/adapter --input photos/ --output sr/ [--knob 100]
    lit-sr-infer --model run.ckpt --input img.png --output out/ --gamma 0 0.5 1 --precision bf16

``--knob`` sets the noise strategy's fidelity-realism knob (t, or a preset such as ``fidelity``;
``uniform`` has none and ignores it). ``--gamma`` blends the fidelity/realism endpoints of IFCSR
models: any number of values costs two generator passes per image. Unreadable images and images
whose output would exceed ``--max-output-pixels`` are reported and skipped; the rest continue,
and the run then ends with one ``error:`` line and exit status 2. Large images run over tiles
automatically (``--auto-tile``, :mod:`lit_sr.autotile`). A progress bar counts images (and the
tiles of a tiled pass); without a terminal, one log line per image and per tiled pass instead.
Each written file is one log line with the timestep it ran at. ``--decoder distilled`` /
``--encoder distilled`` swap in the small VAE halves an ``experiment=distill_vae`` run added to the
export; ``--runtime onnx`` runs the export's ONNX graph (``python -m lit_sr.export_onnx``) with
ONNX Runtime instead of PyTorch. ``--batch-size N`` runs up to N
consecutive images of equal size in one pass (the noise some strategies draw is then seeded once
per batch, not per image). No output is ever written over an input file.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from datamodules.imageio import is_image_path, load_image
from lit_sr.autotile import DEFAULT_AUTO_TILE, DEFAULT_MAX_OUTPUT_PIXELS, check_output_size
from lit_sr.blend import read_gamma_map
from lit_sr.cli import run_main
from lit_sr.errors import LitSRError
from lit_sr.model.colorfix import COLOR_FIXES
from lit_sr.model.tiling import tile_progress
from lit_sr.pipeline import LitSRPipeline

log = logging.getLogger("lit_sr.infer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lit-sr-infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="adapter export folder or Lightning checkpoint")
    p.add_argument("--input", required=True, help="image file or folder (searched recursively)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    p.add_argument("--knob", default=None, help="fidelity-realism knob of the noise strategy (t or preset)")
    p.add_argument("--gamma", type=float, nargs="+", default=None, help="IFCSR blend weight(s) in [0, 1]")
    p.add_argument("--gamma-map", default=None,
                   help="IFCSR region control: an 8-bit grayscale PNG of γ per output pixel (value / 255), e.g. "
                        "exported by the studio page; the result equals the page's export to the bit")
    p.add_argument("--tile", type=int, default=None, help="latent tile size (latent pixels) for large images")
    p.add_argument("--tile-overlap", type=int, default=None, help="latent tile overlap (default: the model's)")
    auto = p.add_mutually_exclusive_group()
    auto.add_argument("--auto-tile", type=int, default=DEFAULT_AUTO_TILE, metavar="LATENT_PIXELS",
                      help="tile passes whose latent has more pixels than this, where --tile/--vae-tile are not given "
                           f"(default {DEFAULT_AUTO_TILE} = 128²: a 512² output on the tiny backbone, 1024² on SD)")
    auto.add_argument("--no-auto-tile", dest="auto_tile", action="store_const", const=None,
                      help="never tile automatically")
    p.add_argument("--max-output-pixels", type=int, default=DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help=f"skip images whose output would have more pixels (default {DEFAULT_MAX_OUTPUT_PIXELS} = 2^25: "
                        "an 8K UHD output fits)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    p.add_argument("--color-fix", choices=sorted(COLOR_FIXES), default="none", help="match the LQ colours")
    p.add_argument("--vae-tile", type=int, default=None,
                   help="VAE encoder/decoder tile size in image pixels (bounded memory for 2K-4K outputs)")
    p.add_argument("--adapter-weights", nargs="+", default=None, metavar="NAME=WEIGHT",
                   help="scale denoiser adapters (diffusers set_adapters style), e.g. alignment=0.5")
    p.add_argument("--fuse", action="store_true", help="merge the LoRA into the base weights (not for endpoint models)")
    p.add_argument("--channels-last", action="store_true", help="NHWC activations for the denoiser and VAE convolutions")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the denoiser and VAE decoder (default backend inductor; the first image compiles)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise some strategies draw (per image or batch)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images of equal size run together, up to this many (a folder of equal-size images)")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bars on stderr (auto: when it is a terminal)")
    p.add_argument("--decoder", choices=["full", "distilled"], default="full",
                   help="VAE decoder: the model's (full) or the small one distilled from it (experiment=distill_vae)")
    p.add_argument("--encoder", choices=["full", "distilled"], default="full",
                   help="VAE encoder: the model's (full) or the small one distilled from it (experiment=distill_vae)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="torch, or ONNX Runtime on the graph python -m lit_sr.export_onnx wrote into the export folder")
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


Plan = list[tuple[Path, dict[str, Path]]]  # (input image, {output suffix: output path}) per image


@dataclass
class RunStats:
    """What a run did: files ``written``, non-image files ``skipped``, and one line per failed image."""

    written: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)


def plan_outputs(src: Path, out_dir: Path, suffixes: list[str], overwrite: bool) -> tuple[Plan, int]:
    """(input image, {suffix: output path}) for every image under ``src``, and the non-image count.

    Every output name is distinct: inputs that share a stem in one folder (``dup.png``,
    ``dup.jpg``) keep their extension in the name (``dup_png.png``, ``dup_jpg.png``). No output
    may be an input file (whatever ``overwrite`` says), the output folder must be writable and,
    without ``overwrite``, no output may exist yet — all checked here, before the model is loaded.
    """
    images, others = [], 0
    inputs = list_inputs(src)
    for path in inputs:
        if is_image_path(path):
            images.append(path)
        else:
            log.warning("skipping %s: not an image file", path)
            others += 1
    rels = [p.relative_to(src) if src.is_dir() else Path(p.name) for p in images]
    stems: dict[Path, int] = {}
    for rel in rels:
        stems[rel.with_suffix("")] = stems.get(rel.with_suffix(""), 0) + 1
    plan = []
    for path, rel in zip(images, rels):
        stem = rel.stem if stems[rel.with_suffix("")] == 1 else f"{rel.stem}_{rel.suffix.lstrip('.').lower()}"
        plan.append((path, {sfx: out_dir / rel.with_name(stem + sfx + ".png") for sfx in suffixes}))
    sources = {p.resolve() for p in inputs}
    clash = next((o for _, outs in plan for o in outs.values() if o.resolve() in sources), None)
    if clash is not None:  # --output = --input would replace the user's photos with SR outputs
        raise LitSRError(f"{clash} is an input file: refusing to write over it; use another --output")
    if out_dir.exists() and not out_dir.is_dir():
        raise LitSRError(f"--output {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".lit_sr_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LitSRError(f"--output {out_dir} is not writable ({exc.strerror or exc})") from None
    if not overwrite:
        existing = [o for _, outs in plan for o in outs.values() if o.exists()]
        if existing:
            raise LitSRError(f"{existing[0]} exists ({len(existing)} outputs would be overwritten): "
                             "use --overwrite or another --output")
    return plan, others


def check_numbers(args: argparse.Namespace) -> None:
    """Sizes and counts that must be positive (one line naming the flag, before anything loads)."""
    for flag, value, least in (("--tile", args.tile, 1), ("--vae-tile", args.vae_tile, 1),
                               ("--tile-overlap", args.tile_overlap, 0), ("--batch-size", args.batch_size, 1),
                               ("--auto-tile", args.auto_tile, 1), ("--max-output-pixels", args.max_output_pixels, 1)):
        if value is not None and value < least:
            raise LitSRError(f"{flag} must be {'a positive' if least else 'a non-negative'} integer, got {value}")


def run(args: argparse.Namespace) -> RunStats:
    """Super-resolve every image; failed images (unreadable or too large) are logged and counted."""
    src, out_dir = Path(args.input), Path(args.output)
    check_numbers(args)
    if args.gamma is not None and args.gamma_map is not None:
        raise LitSRError("--gamma and --gamma-map exclude each other")
    gamma_map = read_gamma_map(args.gamma_map) if args.gamma_map else None
    suffixes = [f"_g{g:g}" for g in args.gamma] if args.gamma is not None else ["_region" if args.gamma_map else ""]
    weights = dict(_name_weight(item) for item in args.adapter_weights or [])
    plan, others = plan_outputs(src, out_dir, suffixes, args.overwrite)
    pipe = _pipeline(args, weights)
    if (args.gamma is not None or gamma_map is not None) and not pipe.has_endpoints:
        raise LitSRError(f"{'--gamma' if args.gamma is not None else '--gamma-map'} needs a model with "
                         "fidelity/realism endpoints (IFCSR)")
    pipe.parse_knob(args.knob)  # a bad knob fails before the first image
    stats = RunStats(skipped=others)
    disable = {"auto": None, "always": False, "never": True}[args.progress]  # None: tqdm's own TTY check
    lines = args.progress == "auto" and not sys.stderr.isatty()  # no bars: a log line per image and tiled pass
    scale = pipe.scale
    done = 0
    with tqdm(total=len(plan), unit="img", desc="images", disable=disable, dynamic_ncols=True) as bar, \
            TileBar(disable, lines) as tiles, logging_redirect_tqdm():
        for group in equal_size_batches(plan, args.batch_size, stats, scale, args.max_output_pixels):
            lq = torch.cat([img for _, _, img in group])
            batch = {"path": [str(path) for path, _, _ in group]}  # per-image prompts (text conditioning)
            if lines:
                h, w = lq.shape[-2:]
                for path, _, _ in group:
                    done += 1
                    log.info("image %d/%d: %s (%dx%d -> %dx%d)", done, len(plan), path, w, h, w * scale, h * scale)
            with tile_progress(tiles.update):
                result = pipe.run(lq, args.knob, args.gamma, gamma_map, args.color_fix, batch, seed=args.seed)
            for (_, outs, _), images, t in zip(group, result.images, result.timesteps):
                for suffix, arr in images.items():
                    outs[suffix].parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(outs[suffix])
                    stats.written += 1
                    log.info("wrote %s (t=%d)", outs[suffix], t)
            bar.update(len(group))
        bar.update(bar.total - bar.n)  # skipped files count as done
    log.info("wrote %d images to %s; skipped %d non-image files; %d images failed", stats.written, out_dir,
             stats.skipped, stats.failed)
    return stats


# PyTorch-runtime options an ONNX graph cannot take (it is fused, fp32 and fixed at export).
TORCH_ONLY = (("--precision", lambda a: a.precision != "fp32"), ("--fuse", lambda a: a.fuse),
              ("--channels-last", lambda a: a.channels_last), ("--compile", lambda a: a.compile),
              ("--adapter-weights", lambda a: a.adapter_weights), ("--set", lambda a: a.set),
              ("--scale", lambda a: a.scale is not None), ("--vae-tile", lambda a: a.vae_tile is not None))


def _pipeline(args: argparse.Namespace, weights: dict[str, float]):
    """The PyTorch pipeline, or the ONNX Runtime one with the same interface (``--runtime onnx``)."""
    if args.runtime == "onnx":
        used = [flag for flag, given in TORCH_ONLY if given(args)]
        if used:
            raise LitSRError(f"{used[0]} applies to --runtime torch; an ONNX graph is fused and fp32 as exported "
                             "(export another with python -m lit_sr.export_onnx)")
        from lit_sr.onnx_pipeline import OnnxPipeline

        return OnnxPipeline.from_export(args.model, args.decoder, args.encoder, device=args.device, tile=args.tile,
                                        tile_overlap=args.tile_overlap, auto_tile=args.auto_tile,
                                        max_output_pixels=args.max_output_pixels)
    overrides = list(args.set) + ([f"model.scale={args.scale}"] if args.scale is not None else [])
    if args.tile_overlap is not None:
        overrides.append(f"model.tile_overlap={args.tile_overlap}")
    return LitSRPipeline.from_pretrained(args.model, device=args.device, precision=args.precision, overrides=overrides,
                                         tile=args.tile, vae_tile=args.vae_tile, fuse=args.fuse,
                                         channels_last=args.channels_last, compile=args.compile,
                                         adapter_weights=weights, auto_tile=args.auto_tile,
                                         max_output_pixels=args.max_output_pixels, decoder=args.decoder,
                                         encoder=args.encoder)


def equal_size_batches(plan: Plan, size: int, stats: RunStats, scale: int = 1,
                       max_output_pixels: int | None = None) -> Iterator[list[tuple[Path, dict[str, Path], Tensor]]]:
    """Consecutive usable images of one size, up to ``size`` at a time. Unreadable images and those
    whose output (``scale``×) would exceed ``max_output_pixels`` — checked from the file's header,
    before decoding — are skipped (logged, recorded in ``stats.failures``)."""
    group: list[tuple[Path, dict[str, Path], Tensor]] = []
    for path, outs in plan:
        try:
            _check_header(path, scale, max_output_pixels)
            lq = load_image(path)[None]
        except LitSRError as exc:
            log.warning("skipping %s", exc)
            stats.failures.append(str(exc))
            continue
        if group and (len(group) == size or group[0][2].shape != lq.shape):
            yield group
            group = []
        group.append((path, outs, lq))
    if group:
        yield group


def _check_header(path: Path, scale: int, max_output_pixels: int | None) -> None:
    """Refuse an image whose output would be too large, from its header (no decoding)."""
    if max_output_pixels is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below applies instead
            with Image.open(path) as img:
                w, h = img.size
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's own limit: it will not even open it
        raise LitSRError(f"{path}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError, SyntaxError):
        return  # unreadable: load_image says why
    check_output_size(h * scale, w * scale, max_output_pixels, f"{path}: a {w}x{h} input")


class TileBar:
    """A second progress bar for the tiles of the current tiled pass (VAE encoder, denoiser, VAE decoder);
    with ``lines``, one log line per finished tiled pass instead."""

    def __init__(self, disable: bool | None, lines: bool = False) -> None:
        self.disable = True if lines else disable
        self.lines = lines
        self.bar: tqdm | None = None
        self.label = ""
        self.started = 0.0

    def update(self, label: str, done: int, total: int) -> None:
        if done == 1:
            self.started = time.perf_counter()
        if self.lines and done == total:
            log.info("  %s: %d tiles in %.1f s", label, total, time.perf_counter() - self.started)
        if self.bar is None or label != self.label or done == 1:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=f"  {label} tiles", unit="tile", leave=False, position=1,
                            disable=self.disable, dynamic_ncols=True)
            self.label = label
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> TileBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _name_weight(item: str) -> tuple[str, float]:
    name, sep, value = item.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise LitSRError(f"--adapter-weights expects name=weight, got {item!r}") from None


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        stats = run(parse_args(argv))
        if stats.failed:  # the rest were written; the exit status still says something failed
            raise LitSRError(f"{stats.failed} image(s) not super-resolved, the first: {stats.failures[0]}; "
                             f"wrote {stats.written} file(s)")

    return run_main(body, (LitSRError, ValueError))  # ValueError: bad knob/gamma/tile values


if __name__ == "__main__":
    sys.exit(main())
