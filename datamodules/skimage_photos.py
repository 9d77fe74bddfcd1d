"""Real photographs bundled with scikit-image, written once to a cache folder as PNG files.

They give the CPU default run and the tests real image statistics without any download.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# Held-out images are disjoint from the training ones (no crops of the same scene on both sides).
TRAIN_PHOTOS = (
    "astronaut", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "camera",
    "brick", "grass", "gravel", "moon", "clock", "colorwheel",
)
VAL_PHOTOS = ("chelsea", "coffee", "coins")


def cache_root() -> Path:
    """The project's cache folder (``LIT_SR_CACHE`` or ``~/.cache/lit_sr``)."""
    return Path(os.environ.get("LIT_SR_CACHE", Path.home() / ".cache" / "lit_sr"))


def photo_array(name: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of the named ``skimage.data`` photo."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def ensure_skimage_photos(root: str | Path | None = None) -> tuple[Path, Path]:
    """Write the train/val photos under ``root`` (once) and return ``(train_dir, val_dir)``."""
    root = Path(root) if root is not None else cache_root() / "skimage_photos"
    dirs = []
    for split, names in (("train", TRAIN_PHOTOS), ("val", VAL_PHOTOS)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = folder / f"{name}.png"
            if not target.exists():
                tmp = folder / f".{name}.{os.getpid()}.png"
                Image.fromarray(photo_array(name)).save(tmp)
                os.replace(tmp, target)  # atomic: concurrent ranks never see half a file
        dirs.append(folder)
    return dirs[0], dirs[1]
