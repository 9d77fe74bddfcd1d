"""Training batches read from a shard set: decode, crop, annotate and degrade in the loader workers.

:class:`ShardSamples` turns one sample of the set (litdata's ``StreamingDataset``, opened lazily in
each process: local folders are memory-mapped in place, object stores are fetched chunk by chunk
into litdata's cache) into a training item exactly as :class:`datamodules.hr_folder.HRCropDataset`
does for a file: the crop and flip come from (seed, draw) with ``draw = epoch · N + sample id``,
TMG fields are cut like the crop. A sample that cannot be used (corrupt bytes, smaller than the
crop) is replaced by one drawn uniformly with the item's own generator, warned about once and
reported in ``bad_files`` — never a crash mid-run.

:class:`ShardBatches` is the map-style dataset the loader uses: a key ``(epoch, j)`` from
:class:`~datamodules.shard_sampling.ShardBatchSampler` becomes this rank's ``j``-th batch of the
epoch (:class:`~datamodules.shard_sampling.StreamOrder`), collated and degraded by the same
collate as folders.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.hr_folder import random_crop
from datamodules.imageio import DEFAULT_MAX_PIXELS, decode_image
from datamodules.mask_cache import MaskCache
from datamodules.sampling import draw_generator
from datamodules.shard_format import Sample, open_reader
from datamodules.shard_sampling import StreamOrder
from datamodules.tmg_dataset import annotate
from lit_sr.errors import ImageLoadError

log = logging.getLogger(__name__)


class ShardSamples:
    """Training items of a shard set by (sample id, epoch); picklable (each process opens the set itself).

    Args:
        root: the shard set (a folder, or an object-store URL litdata reads).
        crop_size / min_size / flip / seed / max_pixels: as for folders.
        cache_dir: where litdata keeps chunks fetched from an object store (None: its default).
        tmg: add prompt/nouns/masks fields (``data.mask_cache`` set, e.g. by ``tmg=comat``).
        mask_cache: a mask cache to take TMG fields from for samples packed without masks (matched by key and SHA-1).
        max_nouns: noun masks per crop.
    """

    def __init__(self, root: str, crop_size: int, min_size: int | None = None, flip: bool = True, seed: int = 0,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, cache_dir: str | None = None, tmg: bool = False,
                 mask_cache: str | None = None, max_nouns: int = 8) -> None:
        self.root, self.cache_dir = str(root), cache_dir
        self.crop_size, self.min_size = int(crop_size), int(min_size or crop_size)
        self.flip, self.seed, self.max_pixels = flip, int(seed), max_pixels
        self.tmg, self.mask_cache_root, self.max_nouns = bool(tmg), mask_cache, int(max_nouns)
        self._ds = None
        self._cache: MaskCache | None = None
        self._bad: dict[int, str] = {}  # sample id → reason (this process)
        self.chunk_sizes = [end - start for start, end in self.dataset.region_of_interest]
        self.total = int(sum(self.chunk_sizes))  # not len(reader): under DDP that is one rank's share

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = state["_cache"] = None  # every worker opens its own reader
        return state

    @property
    def dataset(self):
        if self._ds is None:
            self._ds, _ = open_reader(self.root, self.cache_dir)
        return self._ds

    def __len__(self) -> int:
        return self.total

    def sample(self, sample_id: int) -> Sample:
        return Sample.from_item(self.dataset[int(sample_id)])

    def _image(self, sample_id: int) -> tuple[Sample, np.ndarray]:
        sample = self.sample(sample_id)
        name = f"{self.root}#{sample_id} ({sample.key})"
        arr = decode_image(name, self.max_pixels, data=sample.image)
        if min(arr.shape[:2]) < self.min_size:
            raise ImageLoadError(f"{name}: {arr.shape[1]}x{arr.shape[0]} is smaller than min_size={self.min_size}")
        return sample, arr

    def item(self, sample_id: int, epoch: int) -> dict:
        """The training item of ``sample_id`` in ``epoch`` (or of its replacement, if it is unusable)."""
        draw = int(epoch) * self.total + int(sample_id)
        gen = draw_generator(self.seed, draw)
        index, new_bad = int(sample_id), []
        for _ in range(20 * self.total + 20):
            if index not in self._bad:
                try:
                    sample, arr = self._image(index)
                    break
                except ImageLoadError as exc:
                    self._bad[index] = str(exc)
                    new_bad.append(f"{self.root}#{index}")
                    log.warning("skipping training sample: %s", exc)
                    if len(self._bad) == self.total:
                        raise ImageLoadError("every sample of the shard set is unusable (see the warnings above); "
                                             "check data.shards") from None
            index = int(torch.randint(self.total, (1,), generator=gen))  # uniform replacement
        else:
            raise ImageLoadError("no usable sample found in many draws; check data.shards")
        crop, where = random_crop(arr, self.crop_size, self.flip, gen)
        item = {"hq": crop, "bad_files": new_bad, "path": sample.key, "crop": where, "draw": draw}
        if self.tmg:
            item.update(annotate(self._annotation(sample), where, self.crop_size, self.max_nouns))
        return item

    def _annotation(self, sample: Sample) -> tuple | None:
        """``(nouns, prompt, masks, image_size)`` from the shard, else from the mask cache; None without any."""
        if sample.nouns:
            return sample.nouns, sample.prompt, sample.masks(), sample.size
        if self.mask_cache_root:
            if self._cache is None:
                self._cache = MaskCache(self.mask_cache_root)
            found = self._cache.find(sample.key)
            if found is not None and found[1].sha1 == sample.sha1:
                nouns, prompt, masks = self._cache.load(found[1])
                return nouns, prompt or sample.prompt, masks, tuple(found[1].image_size)
        if sample.prompt:
            return [], sample.prompt, np.zeros((0, 1, 1), dtype=bool), sample.size
        return None


class ShardBatches(Dataset):
    """Batch key ``(epoch, j)`` → this rank's ``j``-th batch of the epoch, collated (and degraded) by ``collate``."""

    def __init__(self, samples: ShardSamples, order: StreamOrder, rank: int,
                 collate: Callable[[list[dict]], dict]) -> None:
        self.samples, self.order, self.rank, self.collate = samples, order, int(rank), collate
        self._plan: tuple[int, np.ndarray] | None = None  # (epoch, its batches), computed once per epoch per process

    def __len__(self) -> int:
        return self.order.batches_per_rank

    def batch_ids(self, epoch: int, j: int) -> list[int]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.order.rank_batches(epoch, self.rank))
        return self._plan[1][j].tolist()

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, j = key
        return self.collate([self.samples.item(i, epoch) for i in self.batch_ids(epoch, j)])


class SampleItems(Dataset):
    """Items of fixed sample ids in one epoch (calibration batches, benchmarks)."""

    def __init__(self, samples: ShardSamples, ids: list[int], epoch: int = 0) -> None:
        self.samples, self.ids, self.epoch = samples, list(ids), int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return self.samples.item(self.ids[index], self.epoch)
