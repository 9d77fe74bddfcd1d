"""HR image folders → random HQ crops, with unreadable or too-small files counted and skipped."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from datamodules.imageio import load_image
from lit_sr.errors import ImageLoadError

log = logging.getLogger(__name__)


class HRCropDataset(Dataset):
    """Random ``crop_size`` crops (with horizontal flip) of HR images.

    A file that cannot be decoded or is smaller than ``min_size`` is skipped: the item is drawn
    from another file (deterministically, from the index), a warning names the file once per
    process, and the item's ``skipped`` field counts how many files were passed over so the
    training system can report a per-epoch total.
    """

    def __init__(self, files: list[Path], crop_size: int, min_size: int | None = None, epoch_size: int | None = None,
                 flip: bool = True, max_attempts: int = 50) -> None:
        if not files:
            raise ValueError("no training images found")
        self.files = list(files)
        self.crop_size = int(crop_size)
        self.min_size = int(min_size or crop_size)
        if self.min_size < self.crop_size:
            raise ValueError(f"min_size={self.min_size} is smaller than crop_size={self.crop_size}")
        self.epoch_size = int(epoch_size or len(self.files))
        self.flip = flip
        self.max_attempts = max_attempts
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self.epoch_size

    def _load(self, path: Path) -> torch.Tensor:
        img = load_image(path)
        h, w = img.shape[-2:]
        if min(h, w) < self.min_size:
            raise ImageLoadError(f"{path}: {w}x{h} is smaller than min_size={self.min_size}")
        return img

    def __getitem__(self, index: int) -> dict:
        skipped = 0
        for attempt in range(self.max_attempts):
            path = self.files[(index + attempt * 7919) % len(self.files)]  # a prime stride walks all files
            try:
                img = self._load(path)
                break
            except ImageLoadError as exc:
                skipped += 1
                if str(path) not in self._warned:
                    self._warned.add(str(path))
                    log.warning("skipping training image: %s", exc)
        else:
            raise ImageLoadError(f"{self.max_attempts} consecutive training images could not be used; check the data folders")
        # Crop position and flip come from torch's global RNG, which Lightning seeds per worker.
        h, w = img.shape[-2:]
        y = int(torch.randint(h - self.crop_size + 1, (1,)))
        x = int(torch.randint(w - self.crop_size + 1, (1,)))
        crop = img[:, y : y + self.crop_size, x : x + self.crop_size]
        flipped = bool(self.flip and torch.rand(()) < 0.5)
        if flipped:
            crop = crop.flip(-1)
        return {"hq": crop.contiguous(), "skipped": skipped, "path": str(path), "crop": (y, x, flipped)}


class HRValDataset(Dataset):
    """Fixed validation HQ images (centre crop to a multiple of ``multiple``)."""

    def __init__(self, files: list[Path], crop: int | None, multiple: int) -> None:
        self.items: list[tuple[str, torch.Tensor]] = []
        for path in files:
            try:
                img = load_image(path)
            except ImageLoadError as exc:
                log.warning("skipping validation image: %s", exc)
                continue
            h, w = img.shape[-2:]
            ch, cw = (min(crop, h), min(crop, w)) if crop else (h, w)
            ch, cw = ch - ch % multiple, cw - cw % multiple
            if ch <= 0 or cw <= 0:
                log.warning("skipping validation image: %s: %dx%d is too small", path, w, h)
                continue
            y, x = (h - ch) // 2, (w - cw) // 2
            self.items.append((Path(path).stem, img[:, y : y + ch, x : x + cw].contiguous()))
        if not self.items:
            raise ValueError("no usable validation images")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        name, hq = self.items[index]
        return {"hq": hq, "name": name}
