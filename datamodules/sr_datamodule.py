"""SRDataModule: HR folders → random crops → degradation → (LQ, HQ) batches, reproducible and resumable.

Degradation runs on whole batches, either in the data-loader workers (``degrade_on=worker``) or
on the batch's device after transfer (``degrade_on=device``, for GPUs). Every random choice is a
function of (seed, draw) (:mod:`datamodules.sampling`): the crops of an item, the degradation of
a batch, the order of an epoch. A resumed run (``ckpt_path=...``) starts the epoch's sampler at
the first batch the checkpoint had not trained on, so it sees exactly the batches of the
uninterrupted run. The sampled degradation parameters travel with the batch as a plain record
(``batch["degradation"]``), so a surprising sample can be reproduced.

Unusable training files are skipped and reported once each (``batch["bad_files"]``); a data
problem that leaves nothing to train on is one line from :meth:`SRDataModule.check`, which the
entry point calls before any model is built.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.degradation.base import Degradation
from datamodules.file_index import index_images
from datamodules.hr_folder import HRCropDataset, HRValDataset
from datamodules.imageio import DEFAULT_MAX_PIXELS
from datamodules.paired import PairedConfig
from datamodules.sampling import EpochSampler, ShardSampler, batch_generator
from datamodules.skimage_photos import cache_root, ensure_skimage_photos
from datamodules.tmg_dataset import collate_mask_fields, wrap_with_masks
from lit_sr.errors import ConfigError, ImageLoadError
from lit_sr.lightning_access import batches_done
from lit_sr.typed import LocalDir, NonNegative, Positive


class DegradeCollate:
    """Stacks HQ crops and degrades the batch with a generator seeded by the batch's draws."""

    def __init__(self, degradation: Degradation | None, seed: int) -> None:
        self.degradation = degradation
        self.seed = int(seed)

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "hq": torch.stack([it["hq"] for it in items]),
            "bad_files": [p for it in items for p in it.get("bad_files", [])],
            "draw": torch.tensor([it.get("draw", i) for i, it in enumerate(items)]),
            "path": [it["path"] for it in items],
            **collate_mask_fields(items),
        }
        if self.degradation is not None:
            lq, target, record = self.degradation(batch["hq"], batch_generator(self.seed, batch["draw"].tolist()))
            batch.update(lq=lq, hq=target, degradation=record.to_dict())
        return batch


class _Items(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _stat(path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _folders(value: list[str] | str | None) -> list[str] | None:
    return [value] if isinstance(value, str) else (None if value is None else [str(v) for v in value])


class SRDataModule(L.LightningDataModule):
    """See the module docstring; YAML: ``conf/data/*.yaml``."""

    __injected_args__ = ("degradation",)

    def __init__(
        self,
        degradation: Degradation,
        train_dirs: list[LocalDir] | LocalDir | None = None,
        val_dirs: list[LocalDir] | LocalDir | None = None,
        val_paired: PairedConfig | None = None,
        crop_size: Positive = 64,
        val_crop: Positive | None = 128,
        min_size: Positive | None = None,
        batch_size: Positive = 4,
        num_workers: NonNegative = 0,
        degrade_on: str = "worker",
        index_cache: bool = True,
        epoch_size: Positive | None = None,
        seed: int = 0,
        size_multiple: Positive = 8,
        mask_cache: str | None = None,
        mask_match: Literal["path", "content"] = "path",
        max_nouns: Positive = 8,
        max_pixels: Positive | None = DEFAULT_MAX_PIXELS,
        working_copy_pixels: Positive | None = 16_000_000,
    ) -> None:
        super().__init__()
        if degrade_on not in ("worker", "device"):
            raise ValueError(f"data.degrade_on must be 'worker' or 'device', got {degrade_on!r}")
        if crop_size % degradation.scale:
            raise ValueError(f"data.crop_size={crop_size} is not divisible by degradation.scale={degradation.scale}")
        if min_size is not None and min_size < crop_size:
            raise ValueError(f"data.min_size={min_size} is smaller than data.crop_size={crop_size} (crops would not fit)")
        self.degradation = degradation
        self.train_dirs, self.val_dirs, self.val_paired = _folders(train_dirs), _folders(val_dirs), val_paired
        self.crop_size, self.val_crop, self.min_size = crop_size, val_crop, min_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.degrade_on, self.index_cache = degrade_on, index_cache
        self.epoch_size, self.seed, self.size_multiple = epoch_size, seed, size_multiple
        self.max_pixels, self.working_copy_pixels = max_pixels, working_copy_pixels
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.mask_cache, self.max_nouns = mask_cache, int(max_nouns)
        if mask_match not in ("path", "content"):
            raise ValueError(f"data.mask_match must be 'path' or 'content', got {mask_match!r}")
        self.mask_match = mask_match

    @property
    def scale(self) -> int:
        return self.degradation.scale

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

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

    def check(self) -> None:
        """Build the datasets now and make sure there is something to train and validate on.

        One line for an empty folder, a folder of only unusable images, or missing validation
        data (called by the entry point before any model is built; ``setup`` reuses the result).
        """
        self.prepare_data()
        try:
            self.setup("fit")
            self.train_set[0]  # decodes until one usable image is found, or says none is
        except (ValueError, FileNotFoundError, ImageLoadError) as exc:
            text = str(exc).splitlines()[0]
            raise ConfigError(text if text.startswith("data.") else f"data: {text}") from None

    def setup(self, stage: str | None = None) -> None:
        train_dirs, val_dirs = self._dirs()
        cache = cache_root() / "index" if self.index_cache else None
        if stage in (None, "fit") and self.train_set is None:
            files = index_images(train_dirs, cache)
            if not files:
                raise ValueError(f"no image files found under {', '.join(train_dirs)}")
            self.train_set = HRCropDataset(files, self.crop_size, self.min_size, self.epoch_size, seed=self.seed,
                                           max_pixels=self.max_pixels, working_copy_pixels=self.working_copy_pixels,
                                           cache_dir=cache_root() / "decoded")
            if self.mask_cache:  # TMG: prompt, nouns and noun masks cut like each crop
                self.train_set = wrap_with_masks(self.train_set, self.mask_cache, self.max_nouns, match=self.mask_match)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._build_val(val_dirs, cache)

    def _build_val(self, val_dirs: list[str], cache) -> Dataset:
        if self.val_paired is not None:
            from datamodules.paired import PairedFolderDataset

            # From a config the node arrives as a plain dict (instantiate converts it); in code, a PairedConfig.
            paired = self.val_paired if isinstance(self.val_paired, PairedConfig) else PairedConfig(**self.val_paired)
            return PairedFolderDataset(scale=self.scale, **dataclasses.asdict(paired))
        multiple = self.scale * self.size_multiple
        hq_set = HRValDataset(index_images(val_dirs, cache), self.val_crop, multiple)
        items = []
        for i in range(len(hq_set)):
            item = hq_set[i]
            # Fixed per-image seed: the same validation LQ in every run, on every rank.
            gen = torch.Generator().manual_seed(self.seed * 1000 + i)
            lq, target, _ = self.degradation(item["hq"][None], gen)
            items.append({"lq": lq[0], "hq": target[0], "name": item["name"]})
        return _Items(items)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = EpochSampler(len(self.train_set), self.seed, rank, world)
        trainer = self.trainer
        if trainer is not None:  # a resumed run: start where the checkpoint stopped within its epoch
            done = batches_done(trainer)  # incl. a batch saved at its end
            sampler.resume(trainer.current_epoch, done * self.batch_size)
        degrade = self.degradation if self.degrade_on == "worker" else None
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=DegradeCollate(degrade, self.seed), drop_last=True, persistent_workers=self.num_workers > 0,
        )

    def calibration_batches(self, max_samples: int) -> tuple[DataLoader, str]:
        """This rank's share of the first ``max_samples`` training draws of epoch 0, cropped and
        batched as in training (degraded in the loader, or by :meth:`on_after_batch_transfer` when
        ``degrade_on=device``), and a signature of everything those samples depend on — for
        caching values derived from them (LDG's ``m_min: auto``) next to the file index."""
        import hashlib
        import json

        if self.train_set is None:
            self.setup("fit")
        rank, world = self._rank_world()
        order = list(iter(EpochSampler(len(self.train_set), self.seed)))[: int(max_samples)]
        draws = order[rank::world]
        degrade = self.degradation if self.degrade_on == "worker" else None
        loader = DataLoader(self.train_set, batch_size=self.batch_size, sampler=draws, num_workers=self.num_workers,
                            collate_fn=DegradeCollate(degrade, self.seed))
        crops = getattr(self.train_set, "dataset", self.train_set)  # under the TMG mask wrapper
        files = getattr(crops, "files", [])
        listing = [(str(p), *_stat(p)) for p in files]
        key = {"files": listing, "crop": self.crop_size, "min_size": self.min_size, "seed": self.seed,
               "epoch_size": len(self.train_set), "batch": self.batch_size, "samples": len(order), "world": world}
        return loader, hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def val_dataloader(self) -> DataLoader:
        # Batch 1: validation images may differ in size. Each rank scores its own shard.
        rank, world = self._rank_world()
        return DataLoader(self.val_set, batch_size=1, sampler=ShardSampler(len(self.val_set), rank, world), num_workers=0)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.degrade_on == "device" and "lq" not in batch:
            gen = batch_generator(self.seed, batch["draw"].tolist(), device=batch["hq"].device)
            lq, target, record = self.degradation(batch["hq"], gen)
            batch.update(lq=lq, hq=target, degradation=record.to_dict())
        return batch
