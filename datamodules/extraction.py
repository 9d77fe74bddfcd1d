"""The data side of TMG mask extraction: which images still need masks, decoded for the models.

Planning skips images the mask cache already covers (by size/mtime or SHA-1); the predict
dataloader decodes each remaining image once and downsizes it for the detector.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datamodules.file_index import index_images
from datamodules.imageio import load_image
from datamodules.mask_cache import MaskCache, file_sha1, image_key, mask_size_for
from lit_sr.errors import ConfigError, ImageLoadError

log = logging.getLogger(__name__)


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
