"""Training crops with their TMG annotation: prompt, nouns and noun masks cut like the image.

:class:`MaskedCropDataset` wraps a :class:`datamodules.hr_folder.HRCropDataset`. For each item
it reads the image's entry from the mask cache (:mod:`datamodules.mask_cache`) and cuts the
masks with the item's own ``crop = (y, x, flipped)``: every output pixel samples the mask at the
same image position as the HQ pixel (``grid_sample`` in whole-image normalised coordinates, so
masks stored downscaled still land on the right pixels), then the same horizontal flip.

Added fields (fixed shapes, so batches stack): ``prompt`` (str; "" without an entry), ``nouns``
(list[str], at most ``max_nouns``), ``masks`` (``(max_nouns, crop, crop)`` bool) and
``mask_valid`` (``(max_nouns,)`` bool; False for padding and for nouns absent from this crop).
:func:`collate_mask_fields` batches them (prompts and nouns as lists).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.mask_cache import MaskCache

log = logging.getLogger(__name__)

MASK_FIELDS = ("prompt", "nouns", "masks", "mask_valid")


def crop_masks(masks: torch.Tensor, image_size: tuple[int, int], crop: tuple[int, int, bool], size: int) -> torch.Tensor:
    """Cut ``(N, h, w)`` whole-image masks to the ``size``×``size`` crop at ``(y, x)`` (+ flip).

    The masks may be stored at a lower resolution than the image (``image_size`` = (H, W)).
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, size, size, dtype=torch.bool)
    y, x, flipped = crop
    H, W = image_size
    # Pixel centres of the crop in normalised whole-image coordinates (align_corners=False).
    ys = (2 * (y + torch.arange(size, dtype=torch.float32) + 0.5) / H) - 1
    xs = (2 * (x + torch.arange(size, dtype=torch.float32) + 0.5) / W) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]  # (1, size, size, 2) as (x, y)
    out = F.grid_sample(masks[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0] > 0.5
    return out.flip(-1) if flipped else out


class MaskedCropDataset(Dataset):
    """HR crops + prompt/nouns/masks from a mask cache (see the module docstring)."""

    def __init__(self, dataset, cache_root: str, max_nouns: int = 8, verify: str = "stat", match: str = "path") -> None:
        if max_nouns < 1:
            raise ValueError(f"max_nouns must be >= 1, got {max_nouns}")
        self.dataset = dataset
        self.max_nouns = int(max_nouns)
        self.cache = MaskCache(cache_root)
        files = getattr(dataset, "files", None)
        if files is None:
            raise TypeError("wrap_with_masks needs a dataset with a .files list (HRCropDataset)")
        self.entries, self.report = self.cache.match(files, verify, match)
        if self.report.problems:
            self.report.warn(self.cache.root, match)
        else:
            log.info("mask cache %s: %s", self.cache.root, self.report.summary())

    def __len__(self) -> int:
        return len(self.dataset)

    def annotation(self, path: str, crop: tuple[int, int, bool], size: int) -> dict:
        """The added fields for one crop of the image at ``path``."""
        entry = self.entries.get(str(path))
        if entry is None:
            return annotate(None, crop, size, self.max_nouns)
        nouns, prompt, full = self.cache.load(entry)
        return annotate((nouns, prompt, full, tuple(entry.image_size)), crop, size, self.max_nouns)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        size = item["hq"].shape[-1]
        item.update(self.annotation(item["path"], tuple(item["crop"]), size))
        return item


def annotate(record: tuple | None, crop: tuple[int, int, bool], size: int, max_nouns: int) -> dict:
    """The TMG fields of one crop from an image's ``(nouns, prompt, masks, image_size)`` (None: no entry).

    ``masks`` are the image's bool ``(N, h, w)`` masks (any stored resolution); shared by folders and shards.
    """
    masks = torch.zeros(max_nouns, size, size, dtype=torch.bool)
    valid = torch.zeros(max_nouns, dtype=torch.bool)
    if record is None:
        return {"prompt": "", "nouns": [], "masks": masks, "mask_valid": valid}
    nouns, prompt, full, image_size = record
    nouns, full = list(nouns)[:max_nouns], full[:max_nouns]
    cut = crop_masks(torch.from_numpy(np.ascontiguousarray(full)), tuple(image_size), crop, size)
    masks[: len(nouns)] = cut
    valid[: len(nouns)] = cut.flatten(1).any(1)  # a noun outside this crop has nothing to attend to
    return {"prompt": prompt, "nouns": nouns, "masks": masks, "mask_valid": valid}


def wrap_with_masks(dataset, cache_root: str, max_nouns: int = 8, verify: str = "stat",
                    match: str = "path") -> MaskedCropDataset:
    """``dataset`` (an HRCropDataset) with TMG fields from the cache at ``cache_root`` (``match``: how
    images find their entry, :meth:`~datamodules.mask_cache.MaskCache.match`)."""
    return MaskedCropDataset(dataset, cache_root, max_nouns, verify, match)


def collate_mask_fields(items: list[dict]) -> dict:
    """Batch the TMG fields of ``items`` (empty when they carry none)."""
    out: dict = {}
    if "prompt" in items[0]:
        out["prompt"] = [it["prompt"] for it in items]
    if "nouns" in items[0]:
        out["nouns"] = [list(it["nouns"]) for it in items]
    if "masks" in items[0]:
        out["masks"] = torch.stack([it["masks"] for it in items])
        out["mask_valid"] = torch.stack([it["mask_valid"] for it in items])
    return out
