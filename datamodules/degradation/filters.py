"""Blur kernels and batched filtering shared by the degradation components.

Every kernel family of the Real-ESRGAN degradation model is computed here for a whole batch at
once from per-sample parameters (so a record stores a handful of numbers, not 21×21 arrays):
isotropic/anisotropic Gaussian, generalized Gaussian, plateau and the circular 2-D sinc.
Kernels are built in float64 and returned as float32 so the same parameters always give the
same bits. Filtering convolves every sample with its own kernel in grouped convolutions (one per
kernel support), also when the samples have different sizes inside a padded canvas (see
:func:`filter_per_sample`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Isotropic normalised Gaussian kernels, one per sigma: (B,) → (B, size, size)."""
    half = (size - 1) / 2.0
    ax = torch.arange(size, dtype=torch.float32, device=sigma.device) - half
    xx, yy = torch.meshgrid(ax, ax, indexing="xy")
    r2 = (xx**2 + yy**2)[None]
    k = torch.exp(-r2 / (2.0 * sigma.float().clamp_min(1e-6)[:, None, None] ** 2))
    return k / k.sum(dim=(1, 2), keepdim=True)


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------


def reflect_index(positions: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """Map integer positions onto ``[0, n)`` by mirror reflection (edge pixel not repeated).

    Unlike ``F.pad(mode="reflect")`` this is defined for any padding width: the signal is
    extended periodically with period ``2(n-1)``, so tiny intermediate images (a 128-px crop
    downscaled by 0.15 is 19 px wide) can still be filtered with a 21-tap kernel.
    """
    n = torch.as_tensor(n, device=positions.device)
    period = (2 * (n - 1)).clamp_min(1)
    m = torch.remainder(positions, period)
    return torch.where(m >= n, period - m, m).clamp_min(0)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad the last two dims of ``x`` by ``pad`` on every side (any image size)."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    if pad < min(h, w):  # the common case: torch's kernel is several times faster than indexing
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = reflect_index(torch.arange(-pad, h + pad, device=x.device), h)
    cols = reflect_index(torch.arange(-pad, w + pad, device=x.device), w)
    return x.index_select(-2, rows).index_select(-1, cols)


def _reflect_pad_ragged(x: torch.Tensor, sizes: Sequence[tuple[int, int]], pad: int) -> torch.Tensor:
    """Reflect-pad each sample around its own valid region ``[:h_i, :w_i]`` of a shared canvas."""
    b, c, hc, wc = x.shape
    heights = torch.tensor([s[0] for s in sizes], device=x.device)[:, None]
    widths = torch.tensor([s[1] for s in sizes], device=x.device)[:, None]
    rows = reflect_index(torch.arange(-pad, hc + pad, device=x.device)[None], heights)  # (B, Hc+2p)
    cols = reflect_index(torch.arange(-pad, wc + pad, device=x.device)[None], widths)  # (B, Wc+2p)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, hc + 2 * pad, wc))
    return x.gather(3, cols[:, None, None, :].expand(b, c, hc + 2 * pad, wc + 2 * pad))


# --------------------------------------------------------------------------------------------
# Filtering
# --------------------------------------------------------------------------------------------


def kernel_radii(kernels: torch.Tensor) -> list[int]:
    """Per kernel (B, k, k), the radius of the smallest centred square holding all its non-zero taps.

    A Real-ESRGAN kernel of size 7 sits zero-padded inside the batch's 21×21 array; filtering it
    at its own size gives the same values for a ninth of the multiply-adds. An identity (pulse)
    kernel has radius 0.
    """
    k = kernels.shape[-1]
    centre = k // 2
    offset = (torch.arange(k, device=kernels.device) - centre).abs()
    reach = torch.maximum(offset[:, None], offset[None, :])  # (k, k) Chebyshev distance to the centre
    nonzero = kernels != 0
    far = torch.where(nonzero, reach, torch.zeros_like(reach)).flatten(1).amax(dim=1)
    return [int(r) for r in far.tolist()]


def filter_per_sample(
    x: torch.Tensor, kernels: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None
) -> torch.Tensor:
    """Convolve each sample of ``x`` (B, C, H, W) with its own kernel (B, k, k) in grouped convolutions.

    Borders are reflect-padded (as BasicSR's ``filter2D``). Samples are grouped by the support of
    their kernel (:func:`kernel_radii`): each group runs one grouped convolution with its kernels
    cropped to that support, and identity kernels are a copy. With ``sizes`` the batch is a
    padded canvas whose sample ``i`` occupies ``[:h_i, :w_i]``: each sample is padded around its
    own region, so the valid region of the output equals filtering that sample alone; values
    outside it are unspecified. Samples of similar size share one smaller canvas
    (:func:`size_buckets`), so a few large samples do not make every sample pay for the largest
    canvas. A sample's result never depends on the other samples in the batch. All kernels here
    are point-symmetric, so correlation equals convolution.
    """
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    if k % 2 == 0 or kernels.shape[-2] != k or kernels.shape[0] != b:
        raise ValueError(f"need one square kernel of odd size per sample, got {tuple(kernels.shape)} for batch {b}")
    uniform = sizes is None or all(tuple(s) == (h, w) for s in sizes)
    sizes = [(h, w)] * b if sizes is None else [tuple(s) for s in sizes]  # type: ignore[misc]
    by_radius: dict[int, list[int]] = {}
    for i, r in enumerate(kernel_radii(kernels)):
        by_radius.setdefault(r, []).append(i)
    out = x.clone() if 0 in by_radius else torch.empty_like(x)  # identity samples keep their input
    weight = kernels.to(device=x.device, dtype=x.dtype)
    for radius, index in sorted(by_radius.items()):
        if radius == 0:
            continue
        crop = weight[:, k // 2 - radius : k // 2 + radius + 1, k // 2 - radius : k // 2 + radius + 1]
        buckets = [index] if uniform else [[index[j] for j in bucket] for bucket in size_buckets([sizes[i] for i in index])]
        for bucket in buckets:
            _filter_group(x, out, crop, bucket, sizes, radius, uniform)
    return out


def _filter_group(
    x: torch.Tensor, out: torch.Tensor, weight: torch.Tensor, index: list[int],
    sizes: Sequence[tuple[int, int]], pad: int, uniform: bool,
) -> None:
    """Filter samples ``index`` of ``x`` with their (cropped) kernels in one grouped conv, into ``out``."""
    b, c = x.shape[:2]
    n = len(index)
    whole = index == list(range(b))
    idx = None if whole else torch.as_tensor(index, device=x.device)
    wgt = (weight if whole else weight.index_select(0, idx))[:, None].repeat_interleave(c, dim=0)  # (n*C, 1, k, k)
    bh, bw = max(sizes[i][0] for i in index), max(sizes[i][1] for i in index)  # (h, w) when uniform
    sub = x[:, :, :bh, :bw] if whole else x[:, :, :bh, :bw].index_select(0, idx)
    sub = reflect_pad(sub, pad) if uniform else _reflect_pad_ragged(sub, [sizes[i] for i in index], pad)
    res = F.conv2d(sub.reshape(1, n * c, bh + 2 * pad, bw + 2 * pad), wgt, groups=n * c).reshape(n, c, bh, bw)
    if whole:
        out[:, :, :bh, :bw] = res
    else:
        out[:, :, :bh, :bw].index_copy_(0, idx, res)


def size_buckets(sizes: Sequence[tuple[int, int]], max_waste: float = 1.25, max_group: int = 8) -> list[list[int]]:
    """Partition sample indices into groups of similar size for filtering on a shared canvas.

    Samples are taken largest first; a group grows while its canvas (max h × max w per sample)
    stays within ``max_waste`` × the pixels it really holds, up to ``max_group`` samples (more
    channels per grouped conv stop paying off on CPU).
    """
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][0] * sizes[i][1], i))
    buckets: list[list[int]] = []
    for i in order:
        if buckets and len(buckets[-1]) < max_group:
            group = buckets[-1] + [i]
            hh, ww = max(sizes[j][0] for j in group), max(sizes[j][1] for j in group)
            if hh * ww * len(group) <= max_waste * sum(sizes[j][0] * sizes[j][1] for j in group):
                buckets[-1] = group
                continue
        buckets.append([i])
    return buckets


def separable_filter(x: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Filter every channel of ``x`` with the outer product of ``kernel_1d`` with itself (reflect borders).

    Two 1-D passes cost 2k instead of k² multiply-adds per pixel (k = 51 for the USM blur).
    """
    b, c, h, w = x.shape
    k = kernel_1d.numel()
    pad = k // 2
    xp = reflect_pad(x, pad).reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    kernel = kernel_1d.to(device=x.device, dtype=x.dtype)
    out = F.conv2d(xp, kernel.view(1, 1, 1, k).expand(b * c, 1, 1, k), groups=b * c)
    out = F.conv2d(out, kernel.view(1, 1, k, 1).expand(b * c, 1, k, 1), groups=b * c)
    return out.reshape(b, c, h, w)


# --------------------------------------------------------------------------------------------
# Kernel families (Real-ESRGAN, Wang et al. 2021, sec. 3 and BasicSR's degradations)
# --------------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred integer coordinates (x = column, y = row) of a size×size kernel, float64."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _as64(value: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64).cpu().reshape(-1)


def quadratic_form(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int
) -> torch.Tensor:
    """``Q = [x y] Σ⁻¹ [x y]ᵀ`` with ``Σ = R(θ) diag(σx², σy²) R(θ)ᵀ`` on the kernel grid: (B, size, size)."""
    sx, sy, th = _as64(sigma_x)[:, None, None], _as64(sigma_y)[:, None, None], _as64(theta)[:, None, None]
    xx, yy = _grid(size)
    # Coordinates in the frame of the principal axes: u along σx, v along σy.
    u = xx * torch.cos(th) + yy * torch.sin(th)
    v = -xx * torch.sin(th) + yy * torch.cos(th)
    return u**2 / sx**2 + v**2 / sy**2


def support_mask(kernel_size: torch.Tensor, pad_to: int) -> torch.Tensor:
    """(B, pad_to, pad_to) bool: the centred ``k_i × k_i`` square of each padded kernel."""
    xx, yy = _grid(pad_to)
    half = (torch.as_tensor(kernel_size).cpu().reshape(-1, 1, 1).to(torch.float64) - 1) / 2.0
    return (xx.abs() <= half) & (yy.abs() <= half)


def _normalise(kernel: torch.Tensor, kernel_size: torch.Tensor | None) -> torch.Tensor:
    """Zero outside each sample's support and scale to unit sum (float64 → float32)."""
    if kernel_size is not None:
        kernel = torch.where(support_mask(kernel_size, kernel.shape[-1]), kernel, torch.zeros_like(kernel))
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    return kernel.to(torch.float32)


def anisotropic_gaussian_kernels(
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    theta: torch.Tensor,
    size: int,
    kernel_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """``exp(-Q/2)``, normalised; isotropic when ``σx = σy``. ``kernel_size`` zero-pads smaller kernels to ``size``."""
    return _normalise(torch.exp(-0.5 * quadratic_form(sigma_x, sigma_y, theta, size)), kernel_size)


def generalized_gaussian_kernels(
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
    size: int,
    kernel_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized Gaussian ``exp(-½ Q^β)``, normalised (β = 1 is the Gaussian)."""
    b = _as64(beta)[:, None, None]
    return _normalise(torch.exp(-0.5 * quadratic_form(sigma_x, sigma_y, theta, size) ** b), kernel_size)


def plateau_kernels(
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
    size: int,
    kernel_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plateau-shaped ``1 / (1 + Q^β)``, normalised."""
    b = _as64(beta)[:, None, None]
    return _normalise(1.0 / (quadratic_form(sigma_x, sigma_y, theta, size) ** b + 1.0), kernel_size)


def sinc_kernels(cutoff: torch.Tensor, size: int, kernel_size: torch.Tensor | None = None) -> torch.Tensor:
    """Circularly symmetric ideal low-pass ``ω J₁(ω r) / (2π r)`` (centre ``ω²/4π``), normalised.

    ``cutoff`` ω is in radians per sample (π is the Nyquist frequency). Its DFT is ≈1 for radial
    frequencies below ω and ≈0 above it, up to the ringing of a finite kernel.
    """
    w = _as64(cutoff)[:, None, None]
    xx, yy = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)[None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    kernel = w * torch.special.bessel_j1(w * safe_r) / (2.0 * math.pi * safe_r)
    kernel = torch.where(r > 0, kernel, w**2 / (4.0 * math.pi))
    return _normalise(kernel, kernel_size)


def pulse_kernels(batch_size: int, size: int) -> torch.Tensor:
    """Identity kernels (a single 1 at the centre): filtering with them returns the input exactly."""
    kernel = torch.zeros(batch_size, size, size)
    kernel[:, size // 2, size // 2] = 1.0
    return kernel


# --------------------------------------------------------------------------------------------
# Unsharp masking (BasicSR USMSharp, used by Real-ESRGAN to sharpen the ground truth)
# --------------------------------------------------------------------------------------------


def opencv_gaussian_1d(ksize: int, sigma: float = 0.0) -> torch.Tensor:
    """The 1-D Gaussian of ``cv2.getGaussianKernel`` for ``ksize > 7``: σ ≤ 0 means ``0.3((k-1)/2 - 1) + 0.8``."""
    if ksize % 2 == 0 or ksize < 1:
        raise ValueError(f"ksize must be a positive odd number, got {ksize}")
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1.0) + 0.8
    ax = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2.0
    g = torch.exp(-(ax**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(torch.float32)


def usm_sharpen(
    img: torch.Tensor,
    radius: int = 50,
    weight: float = 0.5,
    threshold: float = 10.0,
    sigma: float = 0.0,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Unsharp masking as BasicSR's ``USMSharp``: sharpen where ``|img - blur| · 255 > threshold``.

    ``blur`` is a Gaussian of size ``radius`` (made odd: 50 → 51, σ = 8 by OpenCV's rule);
    the binary edge mask is blurred the same way and blends ``clip(img + weight·(img - blur))``
    with ``img``. The batch is processed in chunks of about ``chunk_elements`` values: the dozen
    full passes over the data are memory-bound on CPU, and chunks that stay in cache run
    markedly faster than one pass over a 16×512² batch, while a GPU hardly notices the extra
    launches. Chunking does not change any sample's result.
    """
    if radius % 2 == 0:
        radius += 1
    kernel = opencv_gaussian_1d(radius, sigma)
    per_sample = max(1, img[0].numel()) if img.shape[0] else 1
    chunk = max(1, chunk_elements // per_sample)
    if img.shape[0] > chunk:
        return torch.cat([_usm(part, kernel, weight, threshold) for part in img.split(chunk)])
    return _usm(img, kernel, weight, threshold)


def _usm(img: torch.Tensor, kernel: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    residual = img - separable_filter(img, kernel)
    soft_mask = separable_filter((residual.abs() * 255.0 > threshold).to(img.dtype), kernel)
    sharp = torch.clamp(img + weight * residual, 0.0, 1.0)
    return torch.lerp(img, sharp, soft_mask)  # soft_mask · sharp + (1 − soft_mask) · img
