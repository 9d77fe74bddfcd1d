"""The data side of TMG mask extraction: which images still need masks, decoded for the models.

Planning skips images the mask cache already covers (by size/mtime or SHA-1); the predict
dataloader decodes each remaining image once and downsizes it for the detector. The images come
from folders or from a packed shard set (``shards=``; :mod:`datamodules.shard_format`): a sample's
cache key is its shard key (``<folder name>/<path inside it>``, the key folders get), so training
on the shards (``data=shards data.mask_cache=...``) finds its masks, and a sample whose SHA-1 the
cache already holds is skipped — a killed job resumes where its journals stopped.
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
from datamodules.imageio import decode_image, load_image, to_tensor
from datamodules.mask_cache import MASK_CACHE_VERSION, MaskCache, file_sha1, image_key, mask_size_for
from datamodules.shard_format import Sample, open_reader, read_manifest
from lit_sr.errors import ConfigError, ImageLoadError

log = logging.getLogger(__name__)


@dataclass
class ImageJob:
    path: str
    key: str
    sample: int | None = None  # the sample's index when the image comes from a shard set


def plan_shard_jobs(shards: str, cache: MaskCache) -> tuple[list[ImageJob], int]:
    """Samples of a shard set still to annotate (by key and SHA-1), and how many the cache already covers."""
    read_manifest(shards)  # one line if it is not a shard set
    dataset, total = open_reader(shards)
    jobs, skipped = [], 0
    for index in range(total):
        sample = Sample.from_item(dataset[index])
        entry = cache.entries.get(sample.key)
        if entry is not None and entry.version == MASK_CACHE_VERSION and entry.sha1 == sample.sha1:
            skipped += 1
            continue
        jobs.append(ImageJob(sample.key, sample.key, index))
    return jobs, skipped


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

    def __init__(self, jobs: list[ImageJob], max_side: int, mask_max_side: int, shards: str | None = None) -> None:
        self.jobs, self.max_side, self.mask_max_side = jobs, int(max_side), int(mask_max_side)
        self.shards = shards
        self._dataset = None  # the shard set's reader, opened in each worker

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def _read(self, job: ImageJob) -> tuple:
        """``(image, sha1, bytes, mtime_ns)`` of a job's image, from its file or its shard sample."""
        if job.sample is None:
            stat = os.stat(job.path)
            return load_image(job.path), file_sha1(job.path), stat.st_size, stat.st_mtime_ns
        if self._dataset is None:
            self._dataset, _ = open_reader(self.shards)
        sample = Sample.from_item(self._dataset[job.sample])
        image = to_tensor(decode_image(f"{self.shards}#{job.sample} ({job.key})", data=sample.image))
        return image, sample.sha1, len(sample.image), -1  # no file: the SHA-1 identifies it

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        job = self.jobs[index]
        item = {"path": job.path, "key": job.key}
        try:
            img, sha1, size_bytes, mtime_ns = self._read(job)
        except (ImageLoadError, OSError) as exc:
            item["error"] = str(exc)
            return item
        h, w = img.shape[-2:]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:  # the models see ≤ 1333 px anyway; decoding once at full size, sending less
            img = F.interpolate(img[None], size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                                antialias=True, align_corners=False)[0].clamp(0, 1)
        item.update(image=img, sha1=sha1, image_size=(h, w), mask_size=mask_size_for((h, w), self.mask_max_side),
                    bytes=size_bytes, mtime_ns=mtime_ns)
        return item


def collate_list(items: list[dict]) -> list[dict]:
    return items  # images differ in size; the models batch them themselves


class ExtractionDataModule(L.LightningDataModule):
    """Plans the job (skipping cached images) on every rank; the distributed sampler shards it."""

    def __init__(self, image_dirs: list[str] | None, cache_dir: str, batch_size: int = 4, num_workers: int = 0,
                 max_side: int = 1333, mask_max_side: int = 512, verify: str = "stat",
                 shards: str | None = None) -> None:
        super().__init__()
        if shards and image_dirs:
            raise ConfigError("give image_dirs or shards, not both (one extraction job per image source)")
        self.shards = shards
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
        if not self.shards:
            self._dirs()

    def setup(self, stage: str | None = None) -> None:
        # Every rank plans from the same cache state: Lightning barriers before and after setup.
        cache = MaskCache(self.cache_dir, create=True)
        if self.shards:
            self.jobs, self.skipped = plan_shard_jobs(self.shards, cache)
        else:
            self.jobs, self.skipped = plan_jobs(self._dirs(), cache, self.verify)
        log.info("mask extraction: %d images to annotate, %d already cached (skipped)", len(self.jobs), self.skipped)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(ExtractionDataset(self.jobs, self.max_side, self.mask_max_side, self.shards),
                          batch_size=self.batch_size,
                          shuffle=False, num_workers=self.num_workers, collate_fn=collate_list)
