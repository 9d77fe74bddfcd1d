"""The streaming order of a shard set: chunk-local, seeded, split over ranks, resumable mid-epoch.

Each epoch visits every sample of the set once, in an order that is a pure function of
(seed, epoch) and the chunk sizes: the chunks in a seeded permutation, the samples of each chunk
in their own seeded permutation (:meth:`StreamOrder.epoch_order`). Rank ``r`` of ``w`` takes the
``r``-th contiguous block of ``M = ⌊N / (w·B)⌋·B`` samples of that order — a few neighbouring
chunks, so a rank (and its workers) read only its share of the set — and cuts it into batches of
``B`` (:meth:`StreamOrder.rank_batches`). The ``N − w·M`` samples at the end of the order (fewer
than ``w·B``; different ones each epoch) wait for the next epoch, as ``drop_last`` would.

:class:`ShardBatchSampler` yields batch keys ``(epoch, j)``; the data-loader workers turn a key
into its batch, so the batch order does not depend on how many workers there are, and a resumed
run starts at the first batch its checkpoint had not trained on (:meth:`ShardBatchSampler.resume`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from datamodules.sampling import ResumableEpoch, draw_generator

_SALT = 0x5EED  # keeps the chunk order's draws apart from the crops' (seed, draw) streams


class StreamOrder:
    """Sample order of each epoch and this rank's batches of it (see the module docstring)."""

    def __init__(self, chunk_sizes: Sequence[int], seed: int, world_size: int = 1, batch_size: int = 1) -> None:
        self.sizes = [int(n) for n in chunk_sizes]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64) if self.sizes else np.zeros(0)
        self.total = int(sum(self.sizes))
        self.seed, self.world_size, self.batch_size = int(seed), int(world_size), int(batch_size)
        per_rank = self.total // (self.world_size * self.batch_size) * self.batch_size
        if per_rank == 0:
            raise ValueError(f"the shard set has {self.total} samples, fewer than one batch of {self.batch_size} "
                             f"for each of {self.world_size} rank(s)")
        self.per_rank = per_rank

    @property
    def batches_per_rank(self) -> int:
        return self.per_rank // self.batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every sample id once: chunks in a seeded order, each chunk's samples shuffled."""
        chunks = torch.randperm(len(self.sizes), generator=draw_generator(self.seed, _SALT, epoch)).tolist()
        parts = [self.starts[c] + torch.randperm(self.sizes[c], generator=draw_generator(self.seed, _SALT, epoch, c)
                                                 ).numpy() for c in chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def rank_batches(self, epoch: int, rank: int) -> np.ndarray:
        """``(batches_per_rank, B)`` sample ids of ``rank`` in ``epoch``."""
        block = self.epoch_order(epoch)[rank * self.per_rank:(rank + 1) * self.per_rank]
        return block.reshape(-1, self.batch_size)


class ShardBatchSampler(ResumableEpoch, Sampler[tuple[int, int]]):
    """Batch keys ``(epoch, j)`` of this rank's epoch, resumable mid-epoch; Lightning calls :meth:`set_epoch`."""

    def __init__(self, batches_per_epoch: int) -> None:
        self.batches = int(batches_per_epoch)
        self.epoch, self._skip = 0, 0  # resume() counts batches of this rank's epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, j) for j in range(self._skip, self.batches)])
