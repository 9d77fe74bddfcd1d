"""JPEG compression of each sample at a per-sample quality: libjpeg on CPU, a tensor codec on a GPU.

Real-ESRGAN uses DiffJPEG, a PyTorch re-implementation of baseline JPEG. On CPU each sample goes
through Pillow (libjpeg): the artefacts real photos carry (the standard quantisation tables scaled
by quality, 4:2:0 chroma subsampling, libjpeg's DCT and rounding), deterministic for a given
libjpeg build; the encode/decode round trips run in parallel threads.

With ``degrade_on=device`` the batch is on a GPU, and a CPU round trip per sample would stall it.
:func:`jpeg_tensor` runs the same baseline codec as tensor operations on the batch's device:
JFIF YCbCr, 2×2 chroma averaging (4:2:0), edge-replicated padding to whole 16-pixel MCUs, the
orthonormal 8×8 DCT, libjpeg's quality-scaled standard tables (``jpeg_set_quality``), rounding,
and on decoding libjpeg's "fancy" (triangular) chroma upsampling. It differs from libjpeg only in
float vs integer DCT rounding and edge details: on the bundled photos at qualities 10–95 the two
decoded images are 1.1–2.1 (of 255) RMS apart, and their distortion against the input agrees to
within 0.25 dB PSNR (0.1 dB for quality ≤ 75; ``tests/test_degradation.py`` holds one against
the other).
``backend: auto`` picks libjpeg for CPU tensors and the tensor codec otherwise.
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


# The standard (ITU T.81 Annex K) luminance and chrominance quantisation tables, row-major.
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32
BACKENDS = ("auto", "pil", "tensor")


def quant_table(base: list[int], quality: int) -> torch.Tensor:
    """libjpeg's ``jpeg_set_quality`` scaling of a base table (baseline: entries clamped to 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    table = [min(max((v * scale + 50) // 100, 1), 255) for v in base]
    return torch.tensor(table, dtype=torch.float32).view(8, 8)


def _dct_matrix(device, dtype=torch.float32) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * torch.pi / 16) * (2 / 8) ** 0.5
    m[0] /= 2**0.5
    return m.to(device, dtype)  # rows: frequencies; orthonormal


def _blocks_roundtrip(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Quantise a (H, W) level-shifted plane (H, W multiples of 8) block by block and reconstruct it."""
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).permute(0, 2, 1, 3)  # (by, bx, 8, 8)
    coef = dct @ blocks @ dct.T
    coef = torch.round(coef / table) * table
    return (dct.T @ coef @ dct).permute(0, 2, 1, 3).reshape(h, w)


def _fancy_upsample(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """libjpeg's h2v2 triangular upsampling (weights 3/4, 1/4 per axis; edges replicated)."""
    import torch.nn.functional as F

    up = F.interpolate(c[None, None], scale_factor=2, mode="bilinear", align_corners=False)[0, 0]
    return up[:h, :w]


def jpeg_tensor(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Baseline JPEG (4:2:0) round trip of ``img`` (3, h, w) in [0, 1] as tensor operations on its device."""
    import torch.nn.functional as F

    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"JPEG compression needs RGB (3, H, W) images, got {tuple(img.shape)}")
    device = img.device
    x = (img.detach().float().clamp(0, 1) * 255).round()
    r, g, b = x[0], x[1], x[2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    h, w = y.shape
    ph, pw = -h % 16, -w % 16  # whole MCUs (16×16 luma, 8×8 subsampled chroma), edges replicated
    pad = (lambda p: F.pad(p[None, None], (0, pw, 0, ph), mode="replicate")[0, 0]) if ph or pw else (lambda p: p)
    dct = _dct_matrix(device)
    luma_q = quant_table(_LUMA, quality).to(device)
    chroma_q = quant_table(_CHROMA, quality).to(device)
    y2 = _blocks_roundtrip(pad(y) - 128, luma_q, dct) + 128
    planes = []
    for c in (cb, cr):
        small = F.avg_pool2d(pad(c)[None, None], 2)[0, 0]  # 4:2:0 by 2×2 averaging
        rec = _blocks_roundtrip(small - 128, chroma_q, dct) + 128
        planes.append(_fancy_upsample(rec.clamp(0, 255), h + ph, w + pw))
    y2, cb2, cr2 = y2[:h, :w].clamp(0, 255), planes[0][:h, :w] - 128, planes[1][:h, :w] - 128
    rgb = torch.stack([y2 + 1.402 * cr2, y2 - 0.344136 * cb2 - 0.714136 * cr2, y2 + 1.772 * cb2])
    return rgb.round().clamp(0, 255) / 255.0


def jpeg_ragged(x: Ragged, quality: Sequence[float], backend: str = "auto") -> Ragged:
    """JPEG round trip of every sample; quality is rounded to the nearest integer (libjpeg takes ints).

    Each sample is converted from and written back to its own region (a padded canvas can be
    several times larger). ``backend``: ``pil`` (libjpeg; round trips in parallel threads,
    :func:`map_samples`), ``tensor`` (:func:`jpeg_tensor` on the batch's device) or ``auto``
    (libjpeg on CPU, the tensor codec on any other device).
    """
    if x.data.shape[1] != 3:
        raise ValueError(f"JPEG compression needs RGB images, got {x.data.shape[1]} channels")
    if backend not in BACKENDS:
        raise ValueError(f"jpeg backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device, dtype = x.data.device, x.data.dtype
    if backend == "tensor" or (backend == "auto" and device.type != "cpu"):
        out = torch.empty_like(x.data)
        for i in range(len(x)):
            h, w = x.sizes[i]
            out[i, :, :h, :w] = jpeg_tensor(x.crop(i), round(float(quality[i]))).to(dtype)
        return Ragged(out, x.sizes)
    pixels = [_to_uint8(x.crop(i)).permute(1, 2, 0).cpu().numpy() for i in range(len(x))]

    def roundtrip(i: int) -> np.ndarray:  # libjpeg releases the GIL: samples run in parallel
        return _encode_decode(pixels[i], round(float(quality[i])))

    out = torch.empty_like(x.data)  # only each sample's region is written
    for i, decoded in enumerate(map_samples(roundtrip, len(x))):
        h, w = x.sizes[i]
        out[i, :, :h, :w] = torch.from_numpy(decoded.copy()).permute(2, 0, 1).to(device, dtype) / 255.0
    return Ragged(out, x.sizes)
