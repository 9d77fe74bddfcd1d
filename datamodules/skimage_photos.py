"""Real photographs bundled with scikit-image and matplotlib, written once to a cache folder as PNG files.

They give the CPU default run and the tests real image statistics without any download.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from lit_sr.photos import TRAIN_PHOTOS, VAL_PHOTOS, cache_root, photo_array  # noqa: F401 (re-exported)


def ensure_skimage_photos(root: str | Path | None = None) -> tuple[Path, Path]:
    """Write the train/val photos under ``root`` (once) and return ``(train_dir, val_dir)``."""
    if root is None:  # one folder per split definition: a changed split never mixes with an old one
        key = hashlib.sha1(repr((TRAIN_PHOTOS, VAL_PHOTOS)).encode()).hexdigest()[:8]
        root = cache_root() / f"skimage_photos-{key}"
    root = Path(root)
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
