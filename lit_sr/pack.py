"""Pack HR image folders (with prompts and TMG masks) into a shard set for ``data=shards``.

    python -m lit_sr.pack input_dirs=[/data/LSDIR,/data/FFHQ] output_dir=/data/shards/lsdir_ffhq workers=16
    python -m lit_sr.pack input_dirs=[/data/DIV2K_train_HR] output_dir=/data/shards/div2k mask_cache=/data/tmg

The config root is ``conf/pack.yaml``. Packing runs in ``workers`` processes, one part of
``part_size`` images at a time, and is resumable: after a kill, the same command finishes the
parts that were not done (:mod:`datamodules.packing`). The format is :mod:`datamodules.shard_format`.
"""
from __future__ import annotations

import sys

from lit_sr.cli import run_main
from lit_sr.config.compose import CONF_DIR, compose
from lit_sr.config.schema import PackConfig


def run(overrides: list[str]):
    """Compose ``conf/pack.yaml`` with ``overrides`` and pack; returns the :class:`PackReport`."""
    from datamodules.packing import PackOptions, pack

    cfg = compose(overrides, config_name="pack", schema=PackConfig)
    prompts = None
    if cfg.prompts:
        from lit_sr.model.conditioning.text import load_prompt_file

        prompts = load_prompt_file(cfg.prompts)
    opts = PackOptions(chunk_bytes=str(cfg.chunk_bytes), min_size=cfg.min_size, max_pixels=cfg.max_pixels,
                       mask_cache=cfg.mask_cache, verify=str(cfg.verify), prompts=prompts)
    return pack([str(d) for d in cfg.input_dirs], str(cfg.output_dir), workers=int(cfg.workers),
                part_size=int(cfg.part_size), opts=opts)


def usage_text() -> str:
    """The help: what the command does and every setting of ``conf/pack.yaml`` with its default."""
    settings = [line for line in (CONF_DIR / "pack.yaml").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    about = "\n\n".join(__doc__.split("\n\n")[:2])  # the summary and the example commands
    return "\n".join(["usage: python -m lit_sr.pack [--help] [key=value ...]", "", about, "",
                      "settings (conf/pack.yaml; override with key=value):", *(f"  {line}" for line in settings)])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(usage_text())
        return 0

    def body() -> None:
        report = run(args)
        left = f" (e.g. {report.skipped_examples[0]})" if report.skipped_examples else ""
        print(f"shard set: {report.samples} samples in {report.chunks} chunks, {report.parts} parts "
              f"({report.parts_written} written now), {report.skipped} images left out{left}")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
