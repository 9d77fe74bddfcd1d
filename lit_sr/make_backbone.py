"""Write a model folder with a published architecture and random weights, to dry-run real-size commands.

    python -m lit_sr.make_backbone --arch sd21-base --out /tmp/sd21-random [--with-image-encoder]
    python train.py experiment=osediff backbone=sd21 backbone.path=/tmp/sd21-random ...
    python -m lit_sr.make_backbone --arch sd35-medium --out /tmp/sd35-random [--layers 2 --text-layers 2]
    python train.py experiment=osediff backbone=sd3 backbone.path=/tmp/sd35-random ...

``sd21-base`` / ``sd21-768v`` (v-prediction) / ``sd-turbo`` write an SD-2 diffusers directory
(``unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json``) that ``backbone=sd21``
loads exactly as it loads the real one; ``sd3-medium`` / ``sd35-medium`` an SD3 directory
(``transformer/ vae/ scheduler/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/``, no T5) for
``backbone=sd3``; ``--with-image-encoder`` adds ``image_encoder/`` (CLIP ViT-H/14) for VPIM.
``grounding-dino-tiny`` / ``sam2-hiera-tiny`` write the folders the mask-extraction job reads
(``grounding=gsam2``). ``--layers`` (SD3: MM-DiT blocks), ``--text-layers`` / ``--vision-layers``
make the networks shallower (full width) for quick tests. The tokenizers need the CLIP BPE table
(``scripts/setup_clip_vocab.sh`` or ``--clip-bpe``). The folder is built beside ``--out`` and
renamed into place when complete.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from lit_sr.cli import run_main
from lit_sr.errors import LitSRError
from lit_sr.model.clip_vocab import read_bpe
from lit_sr.model.random_backbone import (
    ARCHITECTURES,
    OPENCLIP_H_VISION,
    SD3_ARCHITECTURES,
    write_sd3_directory,
    write_sd_directory,
    write_vision_encoder,
)
from lit_sr.tagging.random_grounding import write_grounding_dino_tiny, write_sam2_hiera_tiny

SD_ARCHES = tuple(ARCHITECTURES)
SD3_ARCHES = tuple(SD3_ARCHITECTURES)
TMG_ARCHES = ("grounding-dino-tiny", "sam2-hiera-tiny")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lit_sr.make_backbone", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, choices=[*SD_ARCHES, *SD3_ARCHES, *TMG_ARCHES])
    p.add_argument("--out", required=True, help="folder to create (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None, help="SD3: MM-DiT blocks (default: the published 24)")
    p.add_argument("--text-layers", type=int, default=None,
                   help="CLIP text encoder depth (default: the published 23; SD3: 12 and 32)")
    p.add_argument("--with-image-encoder", action="store_true", help="also write image_encoder/ (CLIP ViT-H/14, VPIM)")
    p.add_argument("--vision-layers", type=int, default=None, help="image encoder depth (default: the published 32)")
    p.add_argument("--clip-bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz or an open-clip-torch wheel")
    return p.parse_args(argv)


def build(args: argparse.Namespace, folder: Path) -> None:
    """Write the chosen architecture into ``folder``."""
    diffusion = (*SD_ARCHES, *SD3_ARCHES)
    only = {"--text-layers": (args.text_layers, diffusion), "--vision-layers": (args.vision_layers, diffusion),
            "--with-image-encoder": (args.with_image_encoder or None, diffusion), "--layers": (args.layers, SD3_ARCHES)}
    for flag, (value, arches) in only.items():
        if value is not None and args.arch not in arches:
            raise LitSRError(f"{flag} applies to {' / '.join(arches)} only, not {args.arch}")
    if args.vision_layers is not None and not args.with_image_encoder:
        raise LitSRError("--vision-layers needs --with-image-encoder")
    if args.arch in SD_ARCHES:
        depths = {k: v for k, v in (("text_layers", args.text_layers), ("vision_layers", args.vision_layers)) if v is not None}
        write_sd_directory(args.arch, folder, read_bpe(args.clip_bpe), seed=args.seed,
                           image_encoder=args.with_image_encoder, **depths)
    elif args.arch in SD3_ARCHES:
        write_sd3_directory(args.arch, folder, read_bpe(args.clip_bpe), seed=args.seed, layers=args.layers,
                            text_layers=args.text_layers)
        if args.with_image_encoder:
            layers = args.vision_layers or OPENCLIP_H_VISION["num_hidden_layers"]
            write_vision_encoder(folder / "image_encoder", seed=args.seed + 3, layers=layers)
    elif args.arch == "grounding-dino-tiny":
        write_grounding_dino_tiny(folder, read_bpe(args.clip_bpe), seed=args.seed)
    else:
        write_sam2_hiera_tiny(folder, seed=args.seed)


def run(args: argparse.Namespace) -> Path:
    out = Path(args.out).expanduser()
    if out.exists():
        raise LitSRError(f"--out {out} exists: remove it or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(args, tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(out)
    return out


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), (LitSRError, ValueError))  # ValueError: a bad depth


if __name__ == "__main__":
    sys.exit(main())
