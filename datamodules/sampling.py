"""Deterministic, resumable sampling: every random choice of the data pipeline is a function of
(seed, draw), so a resumed run sees exactly the batches the uninterrupted run would have seen.

A *draw* is one training item: ``epoch · epoch_size + index``. :class:`EpochSampler` yields the
draws of an epoch in a seeded order (one shard per rank, no Lightning wrapper needed), and can
start mid-epoch (:meth:`EpochSampler.resume`). The dataset derives the crop and the flip from
:func:`draw_generator` of its draw, and the collate derives the degradation of a batch from its
draws, so nothing depends on worker processes, global RNG state or how far a process got.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

_MASK = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (SplitMix64 steps; the same on every platform)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & _MASK


def draw_generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by ``seed`` and the keys (a draw, or a batch's draws)."""
    return torch.Generator(device=device).manual_seed(mix_seed(seed, *keys))


def batch_generator(seed: int, draws: Sequence[int], device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one batch, from its draws (the same batch gets the same degradation)."""
    return draw_generator(seed, len(draws), *draws, device=device)


class ResumableEpoch:
    """The epoch a sampler is in and how much of it a resumed run skips (``set_epoch`` / ``resume``).

    The skip holds for the whole epoch, not for one ``iter()``: torch's multi-worker loader iterates
    its sampler twice when it starts. It is dropped when the epoch changes (a resume point belongs
    to the epoch it was set for).
    """

    epoch: int = 0
    _skip: int = 0  # items (or batches) of the current epoch already trained on

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def resume(self, epoch: int, done: int) -> None:
        """Start at position ``done`` of ``epoch`` (a mid-epoch checkpoint)."""
        self.epoch, self._skip = int(epoch), max(0, int(done))


class EpochSampler(ResumableEpoch, Sampler[int]):
    """The draws of each epoch in a seeded order, this rank's shard of them, resumable mid-epoch.

    Each epoch is a permutation of ``range(epoch_size)`` seeded by (seed, epoch); rank ``r`` of
    ``w`` takes every ``w``-th position starting at ``r`` (the tail that does not divide evenly is
    dropped so every rank has the same number of items). Lightning calls :meth:`set_epoch`.
    """

    def __init__(self, epoch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if epoch_size < world_size:
            raise ValueError(f"epoch_size={epoch_size} is smaller than the number of ranks ({world_size})")
        self.epoch_size, self.seed = int(epoch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self._skip = 0, 0  # resume() counts items of this rank's shard

    def __len__(self) -> int:
        return self.epoch_size // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.epoch_size, generator=draw_generator(self.seed, self.epoch)).tolist()
        shard = order[self.rank::self.world_size][: len(self)]
        base = self.epoch * self.epoch_size
        return iter([base + i for i in shard[self._skip:]])


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + w, …`` of a fixed-order dataset (validation on several ranks)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        # A rank past the end (more ranks than images) repeats one: Lightning refuses an empty loader on any rank.
        self.indices = list(range(int(rank), int(size), int(world_size))) or ([int(rank) % int(size)] if size else [])

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
