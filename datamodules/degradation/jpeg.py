"""Real JPEG compression of each sample through Pillow (libjpeg), at a per-sample quality.

Real-ESRGAN uses DiffJPEG, a PyTorch re-implementation of baseline JPEG. Encoding with libjpeg
gives the artefacts real photos carry (the standard quantisation tables scaled by quality,
4:2:0 chroma subsampling, libjpeg's DCT and rounding), needs no extra code to keep faithful and
is deterministic for a given libjpeg build. The price is a CPU round trip per sample and no
gradient, neither of which data synthesis needs.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from datamodules.degradation.ragged import Ragged, map_samples


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _encode_decode(arr: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), "RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode ``img`` (3, h, w) in [0, 1] as an 8-bit JPEG of ``quality`` (1–100) and decode it (CPU float32)."""
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"JPEG compression needs RGB (3, H, W) images, got {tuple(img.shape)}")
    out = _encode_decode(_to_uint8(img).permute(1, 2, 0).cpu().numpy(), quality)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).to(torch.float32) / 255.0


def jpeg_ragged(x: Ragged, quality: Sequence[float]) -> Ragged:
    """JPEG round trip of every sample; quality is rounded to the nearest integer (libjpeg takes ints).

    Each sample is converted from and written back to its own region (a padded canvas can be
    several times larger); the encode/decode round trips run in parallel (:func:`map_samples`).
    """
    if x.data.shape[1] != 3:
        raise ValueError(f"JPEG compression needs RGB images, got {x.data.shape[1]} channels")
    device, dtype = x.data.device, x.data.dtype
    pixels = [_to_uint8(x.crop(i)).permute(1, 2, 0).cpu().numpy() for i in range(len(x))]

    def roundtrip(i: int) -> np.ndarray:  # libjpeg releases the GIL: samples run in parallel
        return _encode_decode(pixels[i], round(float(quality[i])))

    out = torch.empty_like(x.data)  # only each sample's region is written
    for i, decoded in enumerate(map_samples(roundtrip, len(x))):
        h, w = x.sizes[i]
        out[i, :, :h, :w] = torch.from_numpy(decoded.copy()).permute(2, 0, 1).to(device, dtype) / 255.0
    return Ragged(out, x.sizes)
