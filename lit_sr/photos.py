"""The project's cache folder and the real photos bundled with its dependencies.

A small base module (no model, data or Lightning imports), so that both the data layer (training
folders) and the model layer (the tiny VAE trained on these photos, cached files) can use it.

The photos ship with scikit-image's data folder and matplotlib's sample data, so no download is
needed. The held-out photos are disjoint scenes from the training ones: no training step and no
step of the tiny VAE's training sees them, and validation and the default's held-out check
(``lit_sr.heldout``) score on them. Grayscale training photos (textures, text) keep their variety
of edges; the tiny VAE's training augments hue and saturation so colour is learnt from the colour ones.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_PHOTOS = (
    "astronaut", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field", "retina",
    "immunohistochemistry", "colorwheel", "camera", "brick", "grass", "gravel", "moon", "clock", "coins", "text",
)
VAL_PHOTOS = ("chelsea", "coffee", "grace_hopper")
_FILES = {  # photos read from a bundled file rather than a skimage.data function
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
}


def cache_root() -> Path:
    """The project's cache folder (``LIT_SR_CACHE`` or ``~/.cache/lit_sr``)."""
    return Path(os.environ.get("LIT_SR_CACHE", Path.home() / ".cache" / "lit_sr"))


def _bundled_file(package: str, name: str) -> Path:
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def photo_array(name: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of the named bundled photo."""
    if name in _FILES:
        with Image.open(_bundled_file(*_FILES[name])) as im:
            arr = np.array(im.convert("RGB"))  # a writable copy
    else:
        import skimage.data

        arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])
