"""Robust image decoding: every supported file becomes an RGB float tensor in [0, 1].

Photo collections contain everything: EXIF-rotated JPEGs, grayscale scans, RGBA and palette
PNGs, 16-bit TIFF/PNG, CMYK JPEGs, truncated downloads. Each is either converted to RGB with
the right value range or rejected with :class:`ImageLoadError` carrying one line that names
the file and the reason, so callers can count and skip it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lit_sr.errors import ImageLoadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an (H, W, 3) float32 array in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "I":  # 32-bit int; PNG 16-bit gray often decodes to this
        arr = np.asarray(img, dtype=np.int64).astype(np.float32)
        arr /= 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max(initial=0))
        arr = arr / (65535.0 if peak > 255 else 255.0 if peak > 1 else 1.0)
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: transparent regions of product shots/logos are white by intent.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return arr


def load_image(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a (3, H, W) float32 tensor in [0, 1], applying EXIF orientation.

    Raises :class:`ImageLoadError` (one line, naming the file) when the file cannot be decoded.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # forces full decode so truncated files fail here
                img = ImageOps.exif_transpose(img) or img
                arr = _to_array(img)
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageLoadError(f"{path}: cannot decode image ({reason})") from exc
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{path}: empty image")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def save_image(tensor: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) tensor in [0, 1] as an 8-bit image (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (tensor.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
