"""HR image folders → random HQ crops, deterministic per draw, with unusable files skipped and counted.

Every item is a function of its *draw* (:mod:`datamodules.sampling`): the file, the crop
position and the flip come from a generator seeded by (seed, draw), so a resumed run rebuilds
exactly the crops of the uninterrupted one.

* **Bad files** (undecodable, too small, above the pixel limit) are replaced by a file drawn
  uniformly from the whole list with the item's own generator, retried until a usable one comes
  up: the replacement is uniform over the usable files and does not depend on which bad files
  this process happens to know already (those are only skipped faster). Each bad file is warned
  about once per process and reported once in the item's ``bad_files``.
* **Large images** (more than ``working_copy_pixels``) are decoded once into an uncompressed
  working copy in the cache folder and memory-mapped: a crop reads its rows only, instead of
  decoding an 8000×8000 PNG for every 64² crop.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.imageio import DEFAULT_MAX_PIXELS, decode_image, load_image, to_tensor
from datamodules.sampling import draw_generator
from lit_sr.errors import ImageLoadError

log = logging.getLogger(__name__)


class HRCropDataset(Dataset):
    """Random ``crop_size`` crops (with horizontal flip) of HR images, indexed by draw.

    ``dataset[draw]`` for any non-negative integer: the file is ``draw % epoch_size`` modulo the
    number of files (an epoch visits the files evenly), the crop comes from (seed, draw).
    """

    def __init__(self, files: list[Path], crop_size: int, min_size: int | None = None, epoch_size: int | None = None,
                 flip: bool = True, seed: int = 0, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 working_copy_pixels: int | None = 16_000_000, cache_dir: str | Path | None = None) -> None:
        if not files:
            raise ValueError("no training images found")
        self.files = [Path(f) for f in files]
        self.crop_size = int(crop_size)
        self.min_size = int(min_size or crop_size)
        if self.min_size < self.crop_size:
            raise ValueError(f"min_size={self.min_size} is smaller than crop_size={self.crop_size}")
        self.epoch_size = int(epoch_size or len(self.files))
        self.flip, self.seed = flip, int(seed)
        self.max_pixels, self.working_copy_pixels = max_pixels, working_copy_pixels
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._bad: dict[int, str] = {}  # file index → reason (this process)

    def __len__(self) -> int:
        return self.epoch_size

    # ------------------------------------------------------------------ decoding
    def _working_copy(self, path: Path) -> np.ndarray:
        """A memory map of the decoded image, written once to the cache (large images only)."""
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
        target = self.cache_dir / f"{key}.npy"
        if not target.exists():
            arr = decode_image(path, self.max_pixels)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{key}.{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, target)  # atomic: concurrent workers never read half a file
            log.info("decoded %s once into a working copy (%dx%d)", path, arr.shape[1], arr.shape[0])
        return np.load(target, mmap_mode="r")

    def _open(self, path: Path):
        """The image as an (H, W, 3) array-like, checked against the size limits."""
        from PIL import Image

        try:
            with Image.open(path) as img:
                w, h = img.size
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{path}: cannot decode image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
        if min(h, w) < self.min_size:
            raise ImageLoadError(f"{path}: {w}x{h} is smaller than min_size={self.min_size}")
        big = self.working_copy_pixels is not None and self.cache_dir is not None and w * h > self.working_copy_pixels
        if big and (self.max_pixels is None or w * h <= self.max_pixels):
            return self._working_copy(path)
        return decode_image(path, self.max_pixels)

    # ------------------------------------------------------------------ items
    def __getitem__(self, draw: int) -> dict:
        gen = draw_generator(self.seed, int(draw))
        index = (int(draw) % self.epoch_size) % len(self.files)
        new_bad: list[str] = []
        for _ in range(20 * len(self.files) + 20):
            if index not in self._bad:
                path = self.files[index]
                try:
                    img = self._open(path)
                    break
                except ImageLoadError as exc:
                    self._bad[index] = str(exc)
                    new_bad.append(str(path))
                    log.warning("skipping training image: %s", exc)
                    if len(self._bad) == len(self.files):
                        raise ImageLoadError("every training image is unusable (see the warnings above); "
                                             "check data.train_dirs") from None
            index = int(torch.randint(len(self.files), (1,), generator=gen))  # uniform replacement
        else:
            raise ImageLoadError("no usable training image found in many draws; check data.train_dirs")
        crop, where = random_crop(img, self.crop_size, self.flip, gen)
        return {"hq": crop, "bad_files": new_bad, "path": str(self.files[index]), "crop": where, "draw": int(draw)}


def random_crop(img, size: int, flip: bool, gen: torch.Generator) -> tuple[torch.Tensor, tuple[int, int, bool]]:
    """A ``size``² crop of an (H, W, 3) array-like (with a horizontal flip when ``flip``), and ``(y, x, flipped)``.

    Draws y, x, then the flip from ``gen``: every training crop, from folders or shards, comes from here.
    """
    h, w = img.shape[:2]
    y = int(torch.randint(h - size + 1, (1,), generator=gen))
    x = int(torch.randint(w - size + 1, (1,), generator=gen))
    flipped = bool(flip and torch.rand((), generator=gen) < 0.5)
    crop = to_tensor(np.asarray(img[y : y + size, x : x + size]))
    if flipped:
        crop = crop.flip(-1)
    return crop.contiguous(), (y, x, flipped)


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
