"""Build the TMG mask cache offline: tags → nouns → Grounding DINO boxes → SAM-2 masks.

    python -m lit_sr.extract_masks tagger=file tagger.path=tags.csv grounding=tiny     # CPU smoke run
    python -m lit_sr.extract_masks shards=/data/shards/lsdir cache_dir=/data/tmg ... trainer.num_nodes=2  # a shard set
    python -m lit_sr.extract_masks image_dirs=[/data/DIV2K_train_HR] cache_dir=/data/tmg \\
        tagger=ram tagger.weights=/models/ram_plus_swin_large_14m.pth \\
        grounding.grounding_dino=/models/grounding-dino-tiny grounding.sam2=/models/sam2.1-hiera-large trainer=gpu

The config root is ``conf/extract.yaml``; its groups live in ``conf/extract/`` (``tagger=ram|clip|file``,
``grounding=gsam2|tiny``) and ``trainer=cpu|gpu`` is shared with training; ``--help`` lists them,
``--cfg`` prints the composed config. The job is a Lightning
``predict`` run, so it shards over devices and nodes like training; each rank writes its batches
to the cache as they finish (:class:`MaskCacheWriter`) and rank 0 merges the journals at the end.
Re-running resumes: images whose cache entry matches their content (size/mtime, else SHA-1) are
skipped when the dataset is built. ``shards=`` reads the images from a packed shard set instead of
folders (cache keys are the samples' keys; training with ``data=shards data.mask_cache=...`` uses them).
"""
from __future__ import annotations

import logging
import sys

import lightning as L
from omegaconf import DictConfig, OmegaConf

from callbacks.mask_cache_writer import MaskCacheWriter
from datamodules.extraction import ExtractionDataModule
from datamodules.mask_cache import MaskCache
from lit_sr.cli import run_main
from lit_sr.config.build import build_component
from lit_sr.config.compose import CONF_DIR, compose
from lit_sr.config.schema import ExtractConfig
from lit_sr.errors import ConfigError
from lit_sr.systems.extract import MaskExtractor

log = logging.getLogger(__name__)

GROUPS = tuple(sorted(p.name for p in (CONF_DIR / "extract").glob("*") if p.is_dir()))


def compose_extract(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/extract.yaml``; ``tagger=clip`` selects ``conf/extract/tagger/clip.yaml``."""
    rewritten = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        # Hydra names a group placed at another package "extract/tagger@tagger"; accept the short name.
        rewritten.append(f"extract/{key}@{key}={value}" if sep and key in GROUPS else item)
    try:
        return compose(rewritten, config_name="extract", schema=ExtractConfig)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("extract/", "")) from None


# ------------------------------------------------------------------------------ entry point

def run(overrides: list[str]) -> dict:
    """Compose the config, run the job, return counts (``written``, ``skipped``, ``failed``, ``entries``)."""
    cfg = compose_extract(overrides)
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = ExtractionDataModule(
        OmegaConf.to_container(cfg.image_dirs) if cfg.image_dirs is not None else None, str(cfg.cache_dir),
        batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), max_side=int(cfg.max_side),
        mask_max_side=int(cfg.mask_max_side), verify=str(cfg.verify), shards=cfg.shards,
    )
    model = MaskExtractor(build_component(cfg.tagger, "tagger"), build_component(cfg.nouns, "nouns"),
                          build_component(cfg.grounding, "grounding"), max_nouns=int(cfg.max_nouns))
    datamodule.setup("predict")  # read-only planning; Lightning plans again on every rank
    if not datamodule.jobs:
        log.info("mask extraction: nothing to do (%d images already cached)", datamodule.skipped)
        return {"written": 0, "skipped": datamodule.skipped, "failed": 0, "entries": len(MaskCache(str(cfg.cache_dir)))}
    writer = MaskCacheWriter(str(cfg.cache_dir))
    trainer_args = OmegaConf.to_container(cfg.trainer)
    trainer = L.Trainer(**trainer_args, callbacks=[writer], logger=False, enable_checkpointing=False,
                        default_root_dir=str(cfg.cache_dir))
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return {"written": writer.written, "skipped": datamodule.skipped, "failed": writer.failed,
            "entries": len(MaskCache(str(cfg.cache_dir)))}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        from lit_sr.config.usage import usage_text

        print(usage_text(config_name="extract"))
        return 0
    if "--cfg" in args:  # the composed config, after every override and interpolation
        return run_main(lambda: print(OmegaConf.to_yaml(compose_extract([a for a in args if a != "--cfg"])), end=""))

    def body() -> None:
        counts = run(args)
        print(f"mask cache: {counts['written']} written, {counts['skipped']} already cached, "
              f"{counts['failed']} unreadable, {counts['entries']} entries")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
