"""Robust image decoding: every supported file becomes an RGB float tensor in [0, 1].

Photo collections contain everything: EXIF-rotated JPEGs, grayscale scans, RGBA and palette
PNGs, 16-bit TIFF/PNG, CMYK JPEGs, truncated downloads. Each is either converted to RGB with
the right value range or rejected with :class:`ImageLoadError` carrying one line that names
the file and the reason, so callers can count and skip it.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lit_sr.errors import ImageLoadError

# Larger images are refused before decoding (Pillow's own bomb check fires at ~89 MP; HR photo
# sets hold 8000x8000 images, so the limit is set here, and data.max_pixels changes it).
DEFAULT_MAX_PIXELS = 200_000_000

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an (H, W, 3) array: uint8 for 8-bit sources, uint16 for deeper ones."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.repeat(np.asarray(img, dtype=np.uint16)[..., None], 3, axis=2)
    if mode in ("I", "F"):  # 32-bit int (PNG 16-bit gray often decodes to this) or float
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max(initial=0))
        scale = 1.0 if peak > 255 else 65535.0 / 255.0 if peak > 1 or mode == "I" else 65535.0
        arr = np.clip(np.round(arr * scale), 0, 65535).astype(np.uint16)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: transparent regions of product shots/logos are white by intent.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` (or its encoded bytes ``data``, e.g. from a shard) to an (H, W, 3) uint8/uint16
    array, EXIF orientation applied.

    Raises :class:`ImageLoadError` (one line, naming the file) when the file cannot be decoded
    or has more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    path = Path(path)
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the pixel limit of "
                                     f"{max_pixels / 1e6:.0f} MP (data.max_pixels)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
                img.load()  # forces full decode so truncated files fail here
            img = ImageOps.exif_transpose(img) or img
            arr = _to_array(img)
    except ImageLoadError:
        raise
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", reason)  # decoded from bytes: the path names it
        raise ImageLoadError(f"{path}: cannot decode image ({reason})") from exc
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{path}: empty image")
    return arr


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8/uint16 array (or a view of one) → (3, H, W) float32 in [0, 1]."""
    peak = 65535.0 if arr.dtype == np.uint16 else 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / peak)


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode ``path`` to a (3, H, W) float32 tensor in [0, 1] (see :func:`decode_image`)."""
    return to_tensor(decode_image(path, max_pixels))


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor in [0, 1] as the (H, W, 3) uint8 array :func:`save_image` writes."""
    return (tensor.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0).round().astype(np.uint8)


def save_image(tensor: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) tensor in [0, 1] as an 8-bit image (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(tensor)).save(path)
