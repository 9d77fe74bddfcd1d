"""A batch whose samples have different sizes, stored as one padded canvas.

Per-sample random resizing gives every sample of a batch its own size between the first resize
and the final resize to the LQ size. The samples stay in one (B, C, H_max, W_max) tensor and
every op respects the valid region ``[:h_i, :w_i]`` of sample ``i`` (what lies outside it is
unspecified): filtering pads each sample around its own region in one grouped convolution
(:func:`filters.filter_per_sample`), resizing runs one ``F.interpolate`` per group of samples that
share (mode, input size, output size), and seeded noise and JPEG work on each sample's region.
A sample's result therefore never depends on the other samples in its batch.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T")


def map_samples(fn: Callable[[int], T], count: int) -> list[T]:
    """``[fn(0), …, fn(count-1)]``, run on up to ``torch.get_num_threads()`` threads.

    For the per-sample ops of a batch (JPEG through libjpeg, seeded noise): both release the GIL,
    so a batch uses every core where a one-sample loop runs them one after another. Each call
    must depend on its own index only; the results are then the same for any thread count.
    """
    workers = min(count, torch.get_num_threads())
    if workers <= 1:
        return [fn(i) for i in range(count)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(count)))


@dataclass
class Ragged:
    """``data`` (B, C, H_max, W_max) with sample ``i`` in ``data[i, :, :h_i, :w_i]``; the rest is unused."""

    data: torch.Tensor
    sizes: list[tuple[int, int]]

    @classmethod
    def uniform(cls, data: torch.Tensor) -> "Ragged":
        return cls(data, [tuple(data.shape[-2:])] * data.shape[0])  # type: ignore[list-item]

    @property
    def is_uniform(self) -> bool:
        return all(s == tuple(self.data.shape[-2:]) for s in self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def crop(self, i: int) -> torch.Tensor:
        """Sample ``i`` as a (C, h_i, w_i) view."""
        h, w = self.sizes[i]
        return self.data[i, :, :h, :w]

    def subset(self, index: Sequence[int]) -> "Ragged":
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.data.device)
        sizes = [self.sizes[i] for i in index]
        hc, wc = max(s[0] for s in sizes), max(s[1] for s in sizes)
        return Ragged(self.data[:, :, :hc, :wc].index_select(0, idx), sizes)

    @staticmethod
    def merge(parts: Sequence["Ragged"], indices: Sequence[Sequence[int]], batch_size: int) -> "Ragged":
        """Inverse of :meth:`subset` over a partition of ``range(batch_size)``."""
        if len(parts) == 1 and list(indices[0]) == list(range(batch_size)):
            return parts[0]
        hc = max(p.data.shape[-2] for p in parts)
        wc = max(p.data.shape[-1] for p in parts)
        ref = parts[0].data
        data = ref.new_empty(batch_size, ref.shape[1], hc, wc)
        sizes: list[tuple[int, int]] = [(0, 0)] * batch_size
        for part, index in zip(parts, indices):
            idx = torch.as_tensor(list(index), dtype=torch.long, device=ref.device)
            data[idx, :, : part.data.shape[-2], : part.data.shape[-1]] = part.data
            for j, i in enumerate(index):
                sizes[i] = part.sizes[j]
        return Ragged(data, sizes)


def interpolate_output_size(size: tuple[int, int], scale_factor: float) -> tuple[int, int]:
    """The size ``F.interpolate(scale_factor=s)`` produces: ``floor(n · s)`` per side."""
    return (math.floor(float(size[0]) * scale_factor), math.floor(float(size[1]) * scale_factor))


def resize_ragged(
    x: Ragged,
    out_sizes: Sequence[tuple[int, int]],
    modes: Sequence[str],
    scale_factors: Sequence[float | None],
) -> Ragged:
    """Resize sample ``i`` to ``out_sizes[i]`` with ``F.interpolate(mode=modes[i])`` (no antialias).

    With ``scale_factors[i]`` set, the call uses ``scale_factor`` instead of ``size``: PyTorch then
    maps coordinates with that factor rather than the size ratio, as Real-ESRGAN's first resize
    does. Samples sharing (mode, size in, size out, factor) are resized in one call; a factor of
    exactly 1 with unchanged size is the identity and is skipped.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in range(len(x)):
        groups[(modes[i], x.sizes[i], tuple(out_sizes[i]), scale_factors[i])].append(i)
    hc = max(s[0] for s in out_sizes)
    wc = max(s[1] for s in out_sizes)
    out = x.data.new_empty(len(x), x.data.shape[1], hc, wc)  # only each sample's region is written
    for (mode, (h, w), (oh, ow), factor), index in groups.items():
        if min(oh, ow) < 1:
            raise ValueError(f"resize to {oh}x{ow} from {h}x{w}: the image is too small for this scale")
        if len(index) == 1:
            src = x.data[index[0] : index[0] + 1, :, :h, :w]
        else:
            src = x.data[:, :, :h, :w].index_select(0, torch.as_tensor(index, device=x.data.device))
        if (oh, ow) == (h, w) and factor in (None, 1.0):
            res = src
        else:
            # align_corners=False is PyTorch's default for these modes; area takes no such argument.
            corners = None if mode == "area" else False
            if factor is not None:
                res = F.interpolate(src, scale_factor=factor, mode=mode, align_corners=corners)
            else:
                res = F.interpolate(src, size=(oh, ow), mode=mode, align_corners=corners)
        if tuple(res.shape[-2:]) != (oh, ow):
            raise RuntimeError(f"interpolate returned {tuple(res.shape[-2:])}, expected {(oh, ow)}")
        for j, i in enumerate(index):
            out[i, :, :oh, :ow] = res[j]
    return Ragged(out, [tuple(s) for s in out_sizes])  # type: ignore[misc]
