"""ShardDataModule: training pairs streamed from a packed shard set to every rank and worker (``data=shards``).

The same pipeline as folders (:class:`~datamodules.sr_datamodule.SRDataModule`: crops from
(seed, draw), degradation in the workers or on the device, TMG fields, validation from folders),
but the training images come from a shard set written by ``python -m lit_sr.pack`` — one pass over
the set per epoch, chunk-local per rank (:mod:`datamodules.shard_sampling`).

Exact resume: the order of every epoch is a function of (seed, epoch, world size, batch size), so
the loader state a resume needs is where the epoch stood — the checkpoint's epoch and batch
counters — plus the stream's identity, which :meth:`ShardDataModule.state_dict` adds to the
checkpoint. A resumed run starts at the first batch its checkpoint had not trained on, on every
rank, so each sample is drawn exactly once per epoch over all ranks, as in the uninterrupted run.
Resuming *mid-epoch* with another number of ranks or another batch size, or on another shard set,
is refused with one line (at an epoch boundary any layout may resume).
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from torch.utils.data import DataLoader

from datamodules.degradation.base import Degradation
from datamodules.imageio import DEFAULT_MAX_PIXELS
from datamodules.paired import PairedConfig
from datamodules.shard_dataset import SampleItems, ShardBatches, ShardSamples
from datamodules.shard_format import read_manifest
from datamodules.shard_sampling import ShardBatchSampler, StreamOrder
from datamodules.sr_datamodule import DegradeCollate, SRDataModule
from lit_sr.errors import ConfigError
from lit_sr.lightning_access import batches_done
from lit_sr.typed import LocalDir, NonNegative, Positive

log = logging.getLogger(__name__)


class ShardDataModule(SRDataModule):
    """See the module docstring; YAML: ``conf/data/shards.yaml``.

    Args (beyond :class:`SRDataModule`'s):
        shards: the shard set (a folder written by ``python -m lit_sr.pack``, or an object-store URL).
        shard_cache: where litdata keeps chunks fetched from an object store (None: its default).
    """

    __injected_args__ = ("degradation",)

    def __init__(
        self,
        degradation: Degradation,
        shards: str,
        val_dirs: list[LocalDir] | LocalDir | None = None,
        val_paired: PairedConfig | None = None,
        crop_size: Positive = 64,
        val_crop: Positive | None = 128,
        min_size: Positive | None = None,
        batch_size: Positive = 4,
        num_workers: NonNegative = 0,
        degrade_on: str = "worker",
        index_cache: bool = True,
        seed: int = 0,
        size_multiple: Positive = 8,
        mask_cache: str | None = None,
        max_nouns: Positive = 8,
        max_pixels: Positive | None = DEFAULT_MAX_PIXELS,
        shard_cache: str | None = None,
    ) -> None:
        super().__init__(degradation, train_dirs=None, val_dirs=val_dirs, val_paired=val_paired, crop_size=crop_size,
                         val_crop=val_crop, min_size=min_size, batch_size=batch_size, num_workers=num_workers,
                         degrade_on=degrade_on, index_cache=index_cache, seed=seed, size_multiple=size_multiple,
                         mask_cache=mask_cache, max_nouns=max_nouns, max_pixels=max_pixels)
        if not shards:
            raise ValueError("data.shards is missing: the shard set to train on (python -m lit_sr.pack ...)")
        self.shards, self.shard_cache = str(shards), shard_cache
        self.manifest: dict = {}
        self.samples: ShardSamples | None = None
        self._resume_state: dict | None = None

    def prepare_data(self) -> None:
        if self.val_dirs is None and self.val_paired is None:
            super().prepare_data()  # the bundled held-out photos validate

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.manifest = read_manifest(self.shards)
            self.samples = ShardSamples(self.shards, self.crop_size, self.min_size, seed=self.seed,
                                        max_pixels=self.max_pixels, cache_dir=self.shard_cache,
                                        tmg=bool(self.mask_cache), mask_cache=self._mask_cache_for_unpacked(),
                                        max_nouns=self.max_nouns)
            if len(self.samples) == 0:
                raise ValueError(f"data.shards: {self.shards} holds no samples")
            self.train_set = SampleItems(self.samples, [0])  # check() decodes this one
            log.info("shard set %s: %d samples in %d chunks", self.shards, len(self.samples),
                     len(self.samples.chunk_sizes))
        if stage in (None, "fit", "validate") and self.val_set is None:
            _, val_dirs = self._dirs()
            from datamodules.skimage_photos import cache_root

            self.val_set = self._build_val(val_dirs, cache_root() / "index" if self.index_cache else None)

    def _mask_cache_for_unpacked(self) -> str | None:
        """The mask cache to read for samples packed without masks (TMG on and the set has none packed)."""
        if not self.mask_cache or self.manifest.get("masks"):
            return None
        from pathlib import Path

        return self.mask_cache if Path(self.mask_cache).expanduser().is_dir() else None

    # ------------------------------------------------------------------ the stream and its state
    def _order(self) -> StreamOrder:
        rank, world = self._rank_world()
        try:
            return StreamOrder(self.samples.chunk_sizes, self.seed, world, self.batch_size)
        except ValueError as exc:
            raise ConfigError(f"data.shards: {exc}") from None

    def identity(self) -> dict[str, Any]:
        """What the stream's order depends on (stored in checkpoints, compared on resume)."""
        _, world = self._rank_world()
        chunks = json.dumps(self.samples.chunk_sizes).encode()
        return {"samples": len(self.samples), "chunks": hashlib.sha1(chunks).hexdigest()[:16], "seed": self.seed,
                "world_size": world, "batch_size": self.batch_size}

    def state_dict(self) -> dict[str, Any]:
        if self.samples is None:
            return {}
        trainer = self.trainer
        progress = batches_done(trainer) if trainer is not None else 0
        epoch = trainer.current_epoch if trainer is not None else 0
        return {"stream": self.identity(), "epoch": int(epoch), "batches_done": int(progress)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_state = dict(state) if state else None

    def _check_resume(self, epoch: int, done: int) -> None:
        saved = (self._resume_state or {}).get("stream")
        if not saved or done == 0:
            return
        now = self.identity()
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            raise ConfigError(f"data.shards: the checkpoint stopped mid-epoch {epoch} on another stream ({what}); "
                              "resume with the same shard set, seed, number of ranks and data.batch_size, or from "
                              "a checkpoint written at the end of an epoch")

    def train_dataloader(self) -> DataLoader:
        rank, _ = self._rank_world()
        order = self._order()
        sampler = ShardBatchSampler(order.batches_per_rank)
        trainer = self.trainer
        if trainer is not None:  # a resumed run: start where the checkpoint stopped within its epoch
            done = batches_done(trainer)  # incl. a batch saved at its end
            self._check_resume(trainer.current_epoch, done)
            sampler.resume(trainer.current_epoch, done)
        degrade = self.degradation if self.degrade_on == "worker" else None
        batches = ShardBatches(self.samples, order, rank, DegradeCollate(degrade, self.seed))
        return DataLoader(batches, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def calibration_batches(self, max_samples: int) -> tuple[DataLoader, str]:
        """This rank's share of the first ``max_samples`` samples of epoch 0, batched as in training."""
        if self.samples is None:
            self.setup("fit")
        rank, world = self._rank_world()
        ids = StreamOrder(self.samples.chunk_sizes, self.seed).epoch_order(0)[: int(max_samples)].tolist()
        degrade = self.degradation if self.degrade_on == "worker" else None
        loader = DataLoader(SampleItems(self.samples, ids[rank::world]), batch_size=self.batch_size,
                            num_workers=self.num_workers, collate_fn=DegradeCollate(degrade, self.seed))
        key = {"shards": self.shards, **self.identity(), "crop": self.crop_size, "min_size": self.min_size,
               "samples_used": len(ids), "world": world}
        return loader, hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
