"""Writes TMG extraction results into the mask cache as batches finish (one journal per rank)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.mask_cache import MaskCache

log = logging.getLogger(__name__)


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
