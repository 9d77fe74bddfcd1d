"""Build the TMG mask cache offline: tags → nouns → Grounding DINO boxes → SAM-2 masks.

    python -m lit_sr.extract_masks tagger=file tagger.path=tags.csv grounding=tiny     # CPU smoke run
    python -m lit_sr.extract_masks image_dirs=[/data/DIV2K_train_HR] cache_dir=/data/tmg \\
        tagger=ram tagger.weights=/models/ram_plus_swin_large_14m.pth \\
        grounding.grounding_dino=/models/grounding-dino-tiny grounding.sam2=/models/sam2.1-hiera-large trainer=gpu

The config root is ``conf/extract.yaml``; its groups live in ``conf/extract/`` (``tagger=ram|clip|file``,
``grounding=gsam2|tiny``) and ``trainer=cpu|gpu`` is shared with training. The job is a Lightning
``predict`` run, so it shards over devices and nodes like training; each rank writes its batches
to the cache as they finish (:class:`MaskCacheWriter`) and rank 0 merges the journals at the end.
Re-running resumes: images whose cache entry matches their content (size/mtime, else SHA-1) are
skipped when the dataset is built.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from datamodules.file_index import index_images
from datamodules.imageio import load_image
from datamodules.mask_cache import MaskCache, file_sha1, image_key, mask_size_for
from lit_sr.build import build_component
from lit_sr.config import CONF_DIR, compose
from lit_sr.errors import ConfigError, ImageLoadError, LitSRError

log = logging.getLogger(__name__)

TOP_LEVEL = {"tagger", "grounding", "nouns", "trainer", "image_dirs", "cache_dir", "batch_size", "num_workers",
             "max_side", "mask_max_side", "max_nouns", "verify", "seed"}
GROUPS = tuple(sorted(p.name for p in (CONF_DIR / "extract").glob("*") if p.is_dir()))


def compose_extract(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/extract.yaml``; ``tagger=clip`` selects ``conf/extract/tagger/clip.yaml``."""
    rewritten = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        # Hydra names a group placed at another package "extract/tagger@tagger"; accept the short name.
        rewritten.append(f"extract/{key}@{key}={value}" if sep and key in GROUPS else item)
    try:
        cfg = compose(rewritten, config_name="extract", top_level=TOP_LEVEL)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("extract/", "")) from None
    if cfg.cache_dir in (None, ""):
        raise ConfigError("missing value for 'cache_dir' (the mask cache folder)")
    if int(cfg.max_nouns) < 1 or int(cfg.mask_max_side) < 8 or int(cfg.max_side) < 32:
        raise ConfigError("bad value: max_nouns must be >= 1, mask_max_side >= 8 and max_side >= 32")
    return cfg


# ------------------------------------------------------------------------------ data

@dataclass
class ImageJob:
    path: str
    key: str


def plan_jobs(image_dirs: list[str], cache: MaskCache, verify: str = "stat") -> tuple[list[ImageJob], int]:
    """Images still to annotate, and how many are skipped because the cache already covers them."""
    jobs, skipped, owner = [], 0, {}
    for root in image_dirs:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"image_dirs: folder not found: {root}")
        name = root.resolve().name
        if name in owner and owner[name] != root.resolve():
            raise ConfigError(f"image_dirs: {owner[name]} and {root} share the folder name {name!r}; cache keys "
                              "would collide (rename or link one of them)")
        owner[name] = root.resolve()
        for path in index_images([root]):
            key = image_key(path, root)
            found = cache.entries.get(key)
            if found is not None:
                try:
                    kind, _ = cache.status(path, verify)
                except OSError:
                    kind = "missing"
                if kind == "ok":
                    skipped += 1
                    continue
            jobs.append(ImageJob(str(path), key))
    return jobs, skipped


class ExtractionDataset(Dataset):
    """Decoded images (long side ≤ ``max_side``) with their key, hash and original size."""

    def __init__(self, jobs: list[ImageJob], max_side: int, mask_max_side: int) -> None:
        self.jobs, self.max_side, self.mask_max_side = jobs, int(max_side), int(mask_max_side)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        job = self.jobs[index]
        item = {"path": job.path, "key": job.key}
        try:
            stat = os.stat(job.path)
            sha1 = file_sha1(job.path)
            img = load_image(job.path)
        except (ImageLoadError, OSError) as exc:
            item["error"] = str(exc)
            return item
        h, w = img.shape[-2:]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:  # the models see ≤ 1333 px anyway; decoding once at full size, sending less
            img = F.interpolate(img[None], size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                                antialias=True, align_corners=False)[0].clamp(0, 1)
        item.update(image=img, sha1=sha1, image_size=(h, w), mask_size=mask_size_for((h, w), self.mask_max_side),
                    bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
        return item


def collate_list(items: list[dict]) -> list[dict]:
    return items  # images differ in size; the models batch them themselves


class ExtractionDataModule(L.LightningDataModule):
    """Plans the job (skipping cached images) on every rank; the distributed sampler shards it."""

    def __init__(self, image_dirs: list[str] | None, cache_dir: str, batch_size: int = 4, num_workers: int = 0,
                 max_side: int = 1333, mask_max_side: int = 512, verify: str = "stat") -> None:
        super().__init__()
        self.prepare_data_per_node = False  # one merger of leftover journals, even with a shared cache on many nodes
        self.image_dirs, self.cache_dir = image_dirs, cache_dir
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.max_side, self.mask_max_side, self.verify = max_side, mask_max_side, verify
        self.jobs: list[ImageJob] = []
        self.skipped = 0

    def _dirs(self) -> list[str]:
        if self.image_dirs:
            return [str(d) for d in self.image_dirs]
        from datamodules.skimage_photos import ensure_skimage_photos

        return [str(ensure_skimage_photos()[0])]

    def prepare_data(self) -> None:
        # Journals left by an interrupted run become part of the index before anyone plans.
        MaskCache(self.cache_dir, create=True).merge_journals()
        self._dirs()

    def setup(self, stage: str | None = None) -> None:
        # Every rank plans from the same cache state: Lightning barriers before and after setup.
        self.jobs, self.skipped = plan_jobs(self._dirs(), MaskCache(self.cache_dir, create=True), self.verify)
        log.info("mask extraction: %d images to annotate, %d already cached (skipped)", len(self.jobs), self.skipped)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(ExtractionDataset(self.jobs, self.max_side, self.mask_max_side), batch_size=self.batch_size,
                          shuffle=False, num_workers=self.num_workers, collate_fn=collate_list)


# ------------------------------------------------------------------------------ model

class MaskExtractor(L.LightningModule):
    """tagger → noun filter → grounded segmentation, one batch of images at a time."""

    def __init__(self, tagger: torch.nn.Module, noun_filter, grounding: torch.nn.Module, max_nouns: int = 16) -> None:
        super().__init__()
        self.tagger, self.noun_filter, self.grounding = tagger, noun_filter, grounding
        self.max_nouns = int(max_nouns)

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        ok = [it for it in batch if "error" not in it]
        results = [{"path": it["path"], "key": it["key"], "error": it["error"]} for it in batch if "error" in it]
        if not ok:
            return results
        images = [it["image"].to(self.device) for it in ok]
        tags = self.tagger(images, [it["path"] for it in ok])
        nouns = [self.noun_filter(t)[: self.max_nouns] for t in tags]
        found = self.grounding(images, nouns, [it["mask_size"] for it in ok])
        for it, t, nm in zip(ok, tags, found):
            results.append({"path": it["path"], "key": it["key"], "sha1": it["sha1"], "prompt": ", ".join(t),
                            "tags": t, "nouns": nm.nouns, "masks": nm.masks.cpu().numpy(), "image_size": it["image_size"],
                            "bytes": it["bytes"], "mtime_ns": it["mtime_ns"]})
        return results


class MaskCacheWriter(BasePredictionWriter):
    """Writes each finished batch to the cache; rank 0 merges the journals at the end."""

    def __init__(self, cache_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.cache_dir = cache_dir
        self.cache: MaskCache | None = None
        self.written = self.failed = self.masks = self.no_nouns = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.cache = MaskCache(self.cache_dir, create=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for res in prediction:
            if "error" in res:
                self.failed += 1
                log.warning("mask extraction: skipping %s", res["error"])
                continue
            self.cache.write(res["key"], res["sha1"], res["prompt"], res["nouns"], res["masks"], res["image_size"],
                             stat=_Stat(res["bytes"], res["mtime_ns"]), rank=trainer.global_rank)
            self.written += 1
            self.masks += len(res["nouns"])
            self.no_nouns += not res["nouns"]

    def on_predict_end(self, trainer, pl_module) -> None:
        log.info("mask extraction (rank %d): wrote %d images (%d masks, %d without any), %d unreadable",
                 trainer.global_rank, self.written, self.masks, self.no_nouns, self.failed)
        trainer.strategy.barrier("mask_cache_merge")
        if trainer.is_global_zero:
            n = MaskCache(self.cache_dir).merge_journals()
            log.info("mask cache %s: %d entries", self.cache_dir, n)


@dataclass
class _Stat:
    """The two stat fields the cache records (file size and mtime, measured when the file was read)."""

    st_size: int
    st_mtime_ns: int


# ------------------------------------------------------------------------------ entry point

def run(overrides: list[str]) -> dict:
    """Compose the config, run the job, return counts (``written``, ``skipped``, ``failed``, ``entries``)."""
    cfg = compose_extract(overrides)
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = ExtractionDataModule(
        OmegaConf.to_container(cfg.image_dirs) if cfg.image_dirs is not None else None, str(cfg.cache_dir),
        batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), max_side=int(cfg.max_side),
        mask_max_side=int(cfg.mask_max_side), verify=str(cfg.verify),
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = run(list(sys.argv[1:] if argv is None else argv))
    except LitSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"mask cache: {counts['written']} written, {counts['skipped']} already cached, {counts['failed']} unreadable, "
          f"{counts['entries']} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
