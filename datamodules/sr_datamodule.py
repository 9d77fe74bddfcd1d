"""SRDataModule: HR folders → random crops → degradation → (LQ, HQ) batches.

Degradation runs on whole batches, either in the data-loader workers (``degrade_on=worker``) or
on the batch's device after transfer (``degrade_on=device``, for GPUs), with a seeded generator
per rank and worker. The sampled parameters travel with the batch as a plain record
(``batch["degradation"]``) so a surprising sample can be reproduced.
"""
from __future__ import annotations

import logging
import os

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.degradation.base import Degradation
from datamodules.file_index import index_images
from datamodules.hr_folder import HRCropDataset, HRValDataset
from datamodules.skimage_photos import cache_root, ensure_skimage_photos
from datamodules.tmg_dataset import collate_mask_fields, wrap_with_masks

log = logging.getLogger(__name__)


class DegradeCollate:
    """Stacks HQ crops and (optionally) degrades the batch with this process's generator."""

    def __init__(self, degradation: Degradation | None, seed: int, rank: int) -> None:
        self.degradation = degradation
        self.seed, self.rank = int(seed), int(rank)
        self._gen: torch.Generator | None = None
        self._pid: int | None = None

    def generator(self) -> torch.Generator:
        if self._gen is None or self._pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            # In a worker, Lightning's worker_init_fn has seeded torch per (rank, worker) already.
            seed = torch.initial_seed() if info is not None else self.seed + 7_919 * self.rank
            self._gen = torch.Generator().manual_seed(seed % (2**63))
            self._pid = os.getpid()
        return self._gen

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "hq": torch.stack([it["hq"] for it in items]),
            "skipped": torch.tensor([it.get("skipped", 0) for it in items]),
            "path": [it["path"] for it in items],
            **collate_mask_fields(items),
        }
        if self.degradation is not None:
            lq, target, record = self.degradation(batch["hq"], self.generator())
            batch.update(lq=lq, hq=target, degradation=record.to_dict())
        return batch


class _PairedList(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class SRDataModule(L.LightningDataModule):
    """See the module docstring; YAML: ``conf/data/*.yaml``."""

    __injected_args__ = ("degradation",)

    def __init__(
        self,
        degradation: Degradation,
        train_dirs: list[str] | None = None,
        val_dirs: list[str] | None = None,
        val_paired: dict | None = None,
        crop_size: int = 64,
        val_crop: int | None = 128,
        min_size: int | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        degrade_on: str = "worker",
        index_cache: bool = True,
        epoch_size: int | None = None,
        seed: int = 0,
        size_multiple: int = 8,
        mask_cache: str | None = None,
        max_nouns: int = 8,
    ) -> None:
        super().__init__()
        if degrade_on not in ("worker", "device"):
            raise ValueError(f"data.degrade_on must be 'worker' or 'device', got {degrade_on!r}")
        if crop_size % degradation.scale:
            raise ValueError(f"data.crop_size={crop_size} is not divisible by degradation.scale={degradation.scale}")
        self.degradation = degradation
        self.train_dirs, self.val_dirs, self.val_paired = train_dirs, val_dirs, val_paired
        self.crop_size, self.val_crop, self.min_size = crop_size, val_crop, min_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.degrade_on, self.index_cache = degrade_on, index_cache
        self.epoch_size, self.seed, self.size_multiple = epoch_size, seed, size_multiple
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._device_gen: torch.Generator | None = None
        self.mask_cache, self.max_nouns = mask_cache, int(max_nouns)

    @property
    def scale(self) -> int:
        return self.degradation.scale

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def prepare_data(self) -> None:
        if self.train_dirs is None or (self.val_dirs is None and self.val_paired is None):
            ensure_skimage_photos()

    def _dirs(self) -> tuple[list[str], list[str]]:
        train, val = self.train_dirs, self.val_dirs
        if train is None or (val is None and self.val_paired is None):
            default_train, default_val = ensure_skimage_photos()
            train = train if train is not None else [str(default_train)]
            val = val if val is not None else [str(default_val)]
        return list(train), list(val or [])

    def setup(self, stage: str | None = None) -> None:
        train_dirs, val_dirs = self._dirs()
        cache = cache_root() / "index" if self.index_cache else None
        if stage in (None, "fit"):
            self.train_set = HRCropDataset(index_images(train_dirs, cache), self.crop_size, self.min_size, self.epoch_size)
            if self.mask_cache:  # TMG: prompt, nouns and noun masks cut like each crop
                self.train_set = wrap_with_masks(self.train_set, self.mask_cache, self.max_nouns)
        if stage in (None, "fit", "validate"):
            self.val_set = self._build_val(val_dirs, cache)

    def _build_val(self, val_dirs: list[str], cache) -> Dataset:
        if self.val_paired is not None:
            from datamodules.paired import PairedFolderDataset

            return PairedFolderDataset(scale=self.scale, **dict(self.val_paired))
        multiple = self.scale * self.size_multiple
        hq_set = HRValDataset(index_images(val_dirs, cache), self.val_crop, multiple)
        items = []
        for i in range(len(hq_set)):
            item = hq_set[i]
            # Fixed per-image seed: the same validation LQ in every run, on every rank.
            gen = torch.Generator().manual_seed(self.seed * 1000 + i)
            lq, target, _ = self.degradation(item["hq"][None], gen)
            items.append({"lq": lq[0], "hq": target[0], "name": item["name"]})
        return _PairedList(items)

    def train_dataloader(self) -> DataLoader:
        degrade = self.degradation if self.degrade_on == "worker" else None
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
            collate_fn=DegradeCollate(degrade, self.seed, self._rank()), drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        # Batch 1: validation images may differ in size.
        return DataLoader(self.val_set, batch_size=1, shuffle=False, num_workers=0)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.degrade_on == "device" and "lq" not in batch:
            device = batch["hq"].device
            if self._device_gen is None or self._device_gen.device != device:
                self._device_gen = torch.Generator(device=device).manual_seed(self.seed + 7_919 * self._rank())
            lq, target, record = self.degradation(batch["hq"], self._device_gen)
            batch.update(lq=lq, hq=target, degradation=record.to_dict())
        return batch
