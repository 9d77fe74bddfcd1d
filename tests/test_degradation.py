"""Real-ESRGAN degradation: kernel formulas, reproducibility, batching, presets and statistics."""
from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special

from datamodules.degradation.base import DegradationRecord
from datamodules.degradation.bicubic import BicubicDegradation
from datamodules.degradation.filters import (
    anisotropic_gaussian_kernels,
    filter_per_sample,
    generalized_gaussian_kernels,
    kernel_radii,
    opencv_gaussian_1d,
    plateau_kernels,
    reflect_pad,
    sinc_kernels,
    usm_sharpen,
)
from datamodules.degradation.jpeg import jpeg_ragged, jpeg_roundtrip
from datamodules.degradation.noise import add_noise, gaussian_noise, poisson_noise
from datamodules.degradation.ragged import Ragged
from datamodules.degradation.realesrgan import BlurSpec, RealESRGANDegradation, _sample_blur
from lit_sr.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "degradation"
PRESETS = ("realesrgan_x4plus", "osediff", "s3diff")


def load_preset(name: str, **overrides):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return instantiate(cfg)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """48 deterministic 128² crops of real photos bundled with scikit-image."""
    import skimage.data

    names = ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field")
    images = [torch.from_numpy(getattr(skimage.data, n)()[..., :3].copy()).permute(2, 0, 1).float() / 255 for n in names]
    gen = torch.Generator().manual_seed(0)
    crops = []
    for k in range(48):
        im = images[k % len(images)]
        h, w = im.shape[1:]
        y = int(torch.randint(0, h - 128 + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - 128 + 1, (1,), generator=gen))
        crops.append(im[:, y : y + 128, x : x + 128])
    return torch.stack(crops)


# ------------------------------------------------------------------------------------------------
# Kernel formulas (an independent numpy evaluation of each published formula)
# ------------------------------------------------------------------------------------------------


def _numpy_quadratic(k: int, sx: float, sy: float, theta: float) -> np.ndarray:
    ax = np.arange(k) - (k - 1) / 2
    xx, yy = np.meshgrid(ax, ax)  # xx varies along columns
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
    grid = np.stack([xx, yy], -1)
    return np.einsum("...i,ij,...j->...", grid, inv, grid)


def _pad_to(kernel: np.ndarray, size: int) -> np.ndarray:
    p = (size - kernel.shape[0]) // 2
    return np.pad(kernel, p)


@pytest.mark.parametrize("k,sx,sy,theta", [(21, 2.5, 2.5, 0.0), (13, 3.0, 0.7, 0.6), (7, 0.4, 1.9, -2.2)])
def test_gaussian_kernel_matches_formula(k: int, sx: float, sy: float, theta: float) -> None:
    expected = np.exp(-0.5 * _numpy_quadratic(k, sx, sy, theta))
    expected = _pad_to(expected / expected.sum(), 21)
    got = anisotropic_gaussian_kernels(torch.tensor([sx]), torch.tensor([sy]), torch.tensor([theta]), 21, torch.tensor([k]))[0]
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-7)
    assert abs(float(got.double().sum()) - 1.0) < 1e-6
    assert torch.equal(got, got.flip(0, 1))  # point symmetric: correlation == convolution
    assert float(got[:, : (21 - k) // 2].abs().sum()) == 0.0  # zero outside the k×k support


def test_isotropic_kernels_are_rotation_symmetric_and_anisotropic_are_not() -> None:
    iso = anisotropic_gaussian_kernels(torch.tensor([1.7]), torch.tensor([1.7]), torch.tensor([0.0]), 21)[0]
    torch.testing.assert_close(iso, iso.T, rtol=0, atol=1e-9)
    torch.testing.assert_close(iso, iso.flip(0), rtol=0, atol=1e-9)
    aniso = anisotropic_gaussian_kernels(torch.tensor([3.0]), torch.tensor([0.8]), torch.tensor([0.0]), 21)[0]
    torch.testing.assert_close(aniso, aniso.flip(1), rtol=0, atol=1e-9)  # θ = 0: mirror symmetric
    assert (aniso - aniso.T).abs().max() > 1e-2  # but wider along x than along y
    assert aniso[10, 14] > aniso[14, 10]
    rotated = anisotropic_gaussian_kernels(torch.tensor([3.0]), torch.tensor([0.8]), torch.tensor([math.pi / 2]), 21)[0]
    torch.testing.assert_close(rotated, aniso.T, rtol=0, atol=1e-7)  # θ = π/2 swaps the axes


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.2])
def test_generalized_gaussian_and_plateau_match_formulas(beta: float) -> None:
    q = _numpy_quadratic(15, 2.0, 1.1, 0.9)
    gen_expected = np.exp(-0.5 * q**beta)
    plat_expected = 1.0 / (q**beta + 1.0)
    args = (torch.tensor([2.0]), torch.tensor([1.1]), torch.tensor([0.9]), torch.tensor([beta]), 21, torch.tensor([15]))
    gen_got = generalized_gaussian_kernels(*args)[0]
    plat_got = plateau_kernels(*args)[0]
    np.testing.assert_allclose(gen_got.numpy(), _pad_to(gen_expected / gen_expected.sum(), 21), atol=1e-7)
    np.testing.assert_allclose(plat_got.numpy(), _pad_to(plat_expected / plat_expected.sum(), 21), atol=1e-7)
    if beta == 1.0:  # β = 1 is the plain Gaussian
        gauss = anisotropic_gaussian_kernels(*args[:3], 21, torch.tensor([15]))[0]
        torch.testing.assert_close(gen_got, gauss, rtol=0, atol=1e-7)


def test_sinc_kernel_formula_and_cutoff_in_frequency() -> None:
    omega = math.pi / 2
    ax = np.arange(21) - 10
    r = np.hypot(*np.meshgrid(ax, ax))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = omega * special.j1(omega * r) / (2 * np.pi * r)
    expected[10, 10] = omega**2 / (4 * np.pi)
    got = sinc_kernels(torch.tensor([omega]), 21)[0]
    np.testing.assert_allclose(got.numpy(), expected / expected.sum(), atol=1e-7)
    # Ideal circular low-pass: |DFT| ≈ 1 inside radius ω, ≈ 0 outside (finite-kernel ringing aside).
    n = 256
    spectrum = torch.fft.fft2(got.double(), s=(n, n)).abs()
    f = torch.fft.fftfreq(n, dtype=torch.float64) * 2 * math.pi
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    radius = torch.sqrt(fx**2 + fy**2)
    inside, outside = spectrum[radius < 0.7 * omega], spectrum[radius > 1.3 * omega]
    assert inside.min() > 0.8 and abs(float(inside.mean()) - 1.0) < 0.1
    assert outside.max() < 0.15 and float(outside.mean()) < 0.03


def test_blur_sampling_follows_kernel_probabilities_and_ranges() -> None:
    spec = BlurSpec()
    n = 6000
    params = _sample_blur(spec, torch.Generator().manual_seed(3), n, "")
    counts = Counter(params["kind"])
    assert abs(counts["sinc"] / n - 0.1) < 0.015
    for kind, p in zip(spec.kernel_list, spec.kernel_prob):
        assert abs(counts[kind] / n - 0.9 * p) < 0.02, kind
    sizes = params["size"]
    assert set(sizes.tolist()) == {7, 9, 11, 13, 15, 17, 19, 21}
    kinds = np.array(params["kind"])
    gauss = torch.from_numpy(~np.isin(kinds, ["sinc", "pulse"]))
    sx = params["sigma_x"][gauss]
    assert sx.min() >= 0.2 and sx.max() <= 3.0
    iso = torch.from_numpy(np.isin(kinds, ["iso", "generalized_iso", "plateau_iso"]))
    assert torch.equal(params["sigma_x"][iso], params["sigma_y"][iso]) and params["theta"][iso].abs().max() == 0
    cut = params["cutoff"] / math.pi
    sinc = torch.from_numpy(kinds == "sinc")
    assert cut[sinc & (sizes < 13)].min() >= 1 / 3 - 1e-6 and cut[sinc & (sizes >= 13)].min() >= 0.2 - 1e-6
    assert cut[sinc & (sizes >= 13)].min() < 1 / 3  # large sinc kernels reach below π/3
    beta_p = params["beta"][torch.from_numpy(np.char.startswith(kinds, "plateau"))]
    assert beta_p.min() >= 1.0 and beta_p.max() <= 2.0


def test_usm_matches_the_2d_definition() -> None:
    torch.manual_seed(0)
    img = torch.rand(2, 3, 64, 80)
    g = opencv_gaussian_1d(51)
    # OpenCV's rule for sigma = 0 at ksize 51 gives σ = 0.3·(25 − 1) + 0.8 = 8.
    ax = torch.arange(51, dtype=torch.float64) - 25
    torch.testing.assert_close(g.double(), torch.exp(-ax**2 / 128) / torch.exp(-ax**2 / 128).sum(), rtol=0, atol=1e-7)
    kernel2d = torch.outer(g, g)[None].expand(2, 51, 51)
    blur = filter_per_sample(img, kernel2d)
    residual = img - blur
    mask = filter_per_sample((residual.abs() * 255 > 10).float(), kernel2d)
    expected = mask * (img + 0.5 * residual).clamp(0, 1) + (1 - mask) * img
    torch.testing.assert_close(usm_sharpen(img), expected, rtol=0, atol=2e-6)
    assert torch.equal(usm_sharpen(img, chunk_elements=1), usm_sharpen(img))  # chunking changes nothing
    flat = torch.full((1, 3, 40, 40), 0.3)
    torch.testing.assert_close(usm_sharpen(flat), flat)


def test_reflect_padding_handles_any_size_and_matches_torch() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    assert torch.equal(reflect_pad(x, 3), F.pad(x, (3, 3, 3, 3), mode="reflect"))
    tiny = torch.rand(1, 3, 4, 4)
    out = filter_per_sample(tiny, sinc_kernels(torch.tensor([1.0]), 21))  # pad 10 > size 4
    assert out.shape == tiny.shape and torch.isfinite(out).all()
    flat = torch.full((1, 3, 5, 6), 0.25)  # mirror extension keeps a constant image constant
    torch.testing.assert_close(filter_per_sample(flat, sinc_kernels(torch.tensor([2.0]), 21)), flat)


def test_filtering_a_padded_canvas_equals_filtering_each_sample_alone() -> None:
    torch.manual_seed(0)
    sizes = [(40, 33), (12, 50), (40, 40), (9, 9), (25, 31)]
    canvas = torch.rand(5, 3, 40, 50)
    kernels = anisotropic_gaussian_kernels(torch.rand(5) * 3 + 0.2, torch.rand(5) * 3 + 0.2, torch.rand(5), 21)
    out = filter_per_sample(canvas, kernels, sizes)
    for i, (h, w) in enumerate(sizes):
        alone = filter_per_sample(canvas[i : i + 1, :, :h, :w].contiguous(), kernels[i : i + 1])
        assert torch.equal(out[i : i + 1, :, :h, :w], alone), i


def test_kernels_are_applied_at_their_own_support() -> None:
    """Zero-padded kernels of mixed sizes give the same result as each kernel at its own size."""
    torch.manual_seed(1)
    sizes = torch.tensor([7, 21, 13, 7, 1])
    kernels = anisotropic_gaussian_kernels(torch.full((5,), 2.0), torch.full((5,), 1.0), torch.rand(5), 21, sizes)
    assert kernel_radii(kernels) == [3, 10, 6, 3, 0]
    x = torch.rand(5, 3, 30, 26)
    out = filter_per_sample(x, kernels)
    assert torch.equal(out[4], x[4])  # size 1 is the identity and is copied, not convolved
    for i, k in enumerate(sizes.tolist()):
        c = 10 - k // 2
        own = kernels[i : i + 1, c : c + k, c : c + k]
        ref = F.conv2d(F.pad(x[i : i + 1], (k // 2,) * 4, mode="reflect"), own[:, None].expand(3, 1, k, k).contiguous(), groups=3)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Noise and JPEG
# ------------------------------------------------------------------------------------------------


def test_noise_fields_follow_their_definitions() -> None:
    n = gaussian_noise((3, 200, 200), 20.0, gray=False, seed=7)
    assert abs(float(n.std()) - 20 / 255) < 0.002 and abs(float(n.mean())) < 0.002
    gray = gaussian_noise((3, 50, 50), 20.0, gray=True, seed=7)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(gaussian_noise((3, 8, 8), 5.0, False, 11), gaussian_noise((3, 8, 8), 5.0, False, 11))
    # Poisson: an image with few levels uses vals = next power of two ≥ #levels, noise ∝ scale.
    img = torch.tensor([0.0, 64 / 255, 128 / 255]).repeat(3, 40, 40 // 3 + 1)[:, :, :40]
    noise = poisson_noise(img, 1.0, gray=False, seed=3)
    dark = noise[img == 0]
    assert torch.all(dark == 0)  # Poisson(0) = 0
    assert torch.allclose(poisson_noise(img, 2.0, False, 3), 2 * noise)
    levels = (img + noise) * 4  # vals = 4 for 3 distinct levels: outputs are multiples of 1/4
    assert torch.allclose(levels, levels.round(), atol=1e-5)


def test_jpeg_quality_controls_error() -> None:
    import skimage.data

    img = torch.from_numpy(skimage.data.astronaut()[:96, :96].copy()).permute(2, 0, 1).float() / 255
    err = [float((jpeg_roundtrip(img, q) - img).abs().mean()) for q in (10, 50, 95)]
    assert err[0] > err[1] > err[2] > 0
    assert torch.equal(jpeg_roundtrip(img, 40), jpeg_roundtrip(img, 40))


def test_tensor_jpeg_codec_matches_libjpeg_in_distortion(photos: torch.Tensor) -> None:
    """The device-side codec (degrade_on=device) against libjpeg on real photo crops: decoded images a
    couple of levels apart, and the same distortion (PSNR against the input) at every quality."""
    from datamodules.degradation.jpeg import jpeg_tensor, quant_table

    assert quant_table([16] * 64, 50)[0, 0] == 16 and quant_table([16] * 64, 75)[0, 0] == 8  # libjpeg scaling
    assert quant_table([99] * 64, 10)[0, 0] == 255  # baseline: clamped to 8 bits

    def psnr(a, b):
        return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))

    crops = [photos[i, :, :101, :77] for i in range(6)]  # odd sizes: padding to whole MCUs
    for q in (10, 30, 50, 75, 95):
        ref = [jpeg_roundtrip(c, q) for c in crops]
        ours = [jpeg_tensor(c, q) for c in crops]
        rms = max(float(((a - b) ** 2).mean().sqrt()) * 255 for a, b in zip(ref, ours))
        gap = abs(np.mean([psnr(a, c) for a, c in zip(ref, crops)]) - np.mean([psnr(b, c) for b, c in zip(ours, crops)]))
        assert rms < 3.0 and gap < 0.35, (q, rms, gap)
        assert all(torch.equal(b * 255, (b * 255).round()) for b in ours)  # decoded to 8-bit levels
    ragged = Ragged(torch.stack([photos[0], photos[1]]), [(128, 128), (96, 80)])
    out = jpeg_ragged(ragged, [40, 80], backend="tensor")
    assert torch.equal(out.crop(1), jpeg_tensor(photos[1, :, :96, :80], 80))
    lq_t, _, _ = load_preset("osediff", jpeg_backend="tensor")(photos[:8], torch.Generator().manual_seed(3))
    lq_p, _, _ = load_preset("osediff")(photos[:8], torch.Generator().manual_seed(3))
    assert psnr(lq_t, lq_p) > 30  # same draws, nearly the same LQ: the codec is the only difference
    with pytest.raises(Exception, match="jpeg_backend must be one of auto, pil, tensor"):
        load_preset("osediff", jpeg_backend="gpu")


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_instantiate_and_produce_lq_at_hq_over_scale(name: str, photos: torch.Tensor) -> None:
    deg = load_preset(name)
    assert isinstance(deg, RealESRGANDegradation) and deg.scale == 4
    assert [s.name for s in deg.stages] == ["first", "second", "final"]
    hq = photos[:6]
    lq, target, record = deg(hq, torch.Generator().manual_seed(0))
    assert lq.shape == (6, 3, 32, 32) and target.shape == hq.shape
    assert lq.min() >= 0 and lq.max() <= 1
    if deg.round_output:
        assert torch.equal(lq * 255, (lq * 255).round())  # 8-bit levels, as the reference rounds
    if not deg.usm_target:
        assert torch.equal(target, hq)
    json.dumps(record.to_dict())


def test_x2_scale_and_usm_target(photos: torch.Tensor) -> None:
    deg = load_preset("realesrgan_x4plus", scale=2)
    lq, target, _ = deg(photos[:3], torch.Generator().manual_seed(1))
    assert lq.shape == (3, 3, 64, 64)
    assert torch.equal(target, usm_sharpen(photos[:3]))
    assert (target - photos[:3]).abs().max() > 0.01


def test_same_seed_same_batch_and_different_seeds_differ(photos: torch.Tensor) -> None:
    deg = load_preset("realesrgan_x4plus")
    hq = photos[:8]
    lq_a, _, rec_a = deg(hq, torch.Generator().manual_seed(123))
    lq_b, _, rec_b = deg(hq, torch.Generator().manual_seed(123))
    assert rec_a.to_dict() == rec_b.to_dict() and torch.equal(lq_a, lq_b)
    lq_c, _, rec_c = deg(hq, torch.Generator().manual_seed(124))  # e.g. another rank's generator
    assert rec_c.to_dict() != rec_a.to_dict()
    assert all(not torch.equal(lq_a[i], lq_c[i]) for i in range(8))


def test_saved_record_reproduces_lq_bit_for_bit(photos: torch.Tensor) -> None:
    deg = load_preset("realesrgan_x4plus")
    hq = photos[:8]
    lq, target, record = deg(hq, torch.Generator().manual_seed(5))
    from_pickle = pickle.loads(pickle.dumps(record))
    from_json = DegradationRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    plain_lists = DegradationRecord(record.batch_size, {k: v for k, v in json.loads(json.dumps(record.to_dict())).items() if k != "batch_size"})
    for rec in (from_pickle, from_json, plain_lists):
        lq2, target2 = deg.apply(hq, rec)
        assert torch.equal(lq2, lq) and torch.equal(target2, target)


def test_from_dict_restores_records_of_other_degradations(photos: torch.Tensor) -> None:
    deg = BicubicDegradation(scale=4, blur_sigma=(0.5, 1.5), noise_std=(0.01, 0.05))
    lq, _, record = deg(photos[:3], torch.Generator().manual_seed(0))
    restored = DegradationRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert {k: v.dtype for k, v in restored.params.items()} == {k: v.dtype for k, v in record.params.items()}
    assert torch.equal(deg.apply(photos[:3], restored)[0], lq)


@pytest.mark.parametrize("name", ["realesrgan_x4plus", "s3diff"])
def test_batched_equals_per_sample(name: str, photos: torch.Tensor) -> None:
    deg = load_preset(name, clean_prob=0.2)
    hq = photos[8:24]
    record = deg.sample(16, torch.Generator().manual_seed(11))
    # The batch mixes sizes (different resize factors), orders, skipped blurs and clean samples.
    assert len(set(record.params["first.resize.scale"].tolist())) > 8
    assert set(record.params["final.order"].tolist()) == {0, 1}
    lq, target = deg.apply(hq, record)
    for i in range(16):
        lq_i, target_i = deg.apply(hq[i : i + 1], record.select(i))
        assert torch.equal(lq_i[0], lq[i]), f"sample {i} differs"
        assert torch.equal(target_i[0], target[i])


def test_per_sample_ops_give_the_same_bits_on_any_number_of_threads() -> None:
    """JPEG and noise run samples on parallel threads; each sample's result must not depend on it."""
    gen = torch.Generator().manual_seed(3)
    sizes = [(40, 52), (64, 64), (17, 30), (64, 33), (50, 50), (31, 64)]
    x = Ragged(torch.rand(6, 3, 64, 64, generator=gen), sizes)
    kinds = ["gaussian", "poisson", "poisson", "gaussian", "poisson", "gaussian"]
    levels, gray, seeds = [5.0, 1.0, 2.5, 20.0, 0.5, 3.0], [False, True, False, True, False, False], list(range(6))
    quality = [30.0, 95.0, 50.5, 70.0, 41.0, 88.0]
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append((add_noise(x, kinds, levels, gray, seeds), jpeg_ragged(x, quality)))
    finally:
        torch.set_num_threads(threads)
    (noise_1, jpeg_1), (noise_3, jpeg_3) = results
    for i, (h, w) in enumerate(sizes):
        assert torch.equal(noise_1.crop(i), noise_3.crop(i)) and torch.equal(jpeg_1.crop(i), jpeg_3.crop(i)), i
        assert torch.equal(jpeg_1.crop(i), jpeg_roundtrip(x.crop(i), round(quality[i])))


def test_clean_samples_are_plain_bicubic_downscales(photos: torch.Tensor) -> None:
    deg = load_preset("osediff", clean_prob=1.0)
    hq = photos[:4]
    lq, _, _ = deg(hq, torch.Generator().manual_seed(0))
    expected = F.interpolate(hq, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(lq, torch.clamp((expected * 255).round(), 0, 255) / 255, rtol=0, atol=0)


def test_degradation_strength_orders_presets(photos: torch.Tensor) -> None:
    """Mean PSNR of LQ against the bicubic downscale of HQ: x4plus < S3Diff's softer ranges < bicubic."""
    reference = F.interpolate(photos, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)

    def mean_psnr(deg) -> float:
        lq, _, _ = deg(photos, torch.Generator().manual_seed(2024))
        mse = ((lq - reference) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        return float((10 * torch.log10(1 / mse)).mean())

    x4plus, s3diff = mean_psnr(load_preset("realesrgan_x4plus")), mean_psnr(load_preset("s3diff"))
    bicubic = mean_psnr(BicubicDegradation(scale=4))
    assert x4plus + 1.0 < s3diff < bicubic, (x4plus, s3diff, bicubic)
    assert 18 < x4plus < 32  # a real degradation, not a no-op or noise


# ------------------------------------------------------------------------------------------------
# Config errors
# ------------------------------------------------------------------------------------------------


def _final() -> dict:
    return {"name": "final", "resize": {"relative_to": "output"}, "jpeg": {"quality": [30, 95]}}


def test_unknown_keys_raise_one_line_errors_naming_them() -> None:
    with pytest.raises(TypeError, match="scael"):
        RealESRGANDegradation(stages=[_final()], scael=4)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"unknown config key 'stages\[0\]\.blur\.sigmaa'"):
        RealESRGANDegradation(stages=[{"name": "a", "blur": {"sigmaa": [1, 2]}}, _final()])
    with pytest.raises(ConfigError, match=r"unknown config key 'stages\[0\]\.bluur'"):
        RealESRGANDegradation(stages=[{"name": "a", "bluur": {}}, _final()])


@pytest.mark.parametrize(
    "stage,match",
    [
        ({"name": "a", "blur": {"kernel_prob": [0.5, 0.5]}}, r"stages\[0\]\.blur\.kernel_prob"),
        ({"name": "a", "blur": {"sizes": [8]}}, r"stages\[0\]\.blur\.sizes"),
        ({"name": "a", "blur": {"sigma": [3, 1]}}, r"stages\[0\]\.blur\.sigma"),
        ({"name": "a", "resize": {"prob": [0.5, 0.6, 0.0]}}, r"stages\[0\]\.resize\.prob"),
        ({"name": "a", "resize": {"modes": ["lanczos"]}}, r"stages\[0\]\.resize\.modes"),
        ({"name": "a", "noise": {"gray_prob": 1.5}}, r"stages\[0\]\.noise\.gray_prob"),
        ({"name": "a", "jpeg": {"quality": [0, 95]}}, r"stages\[0\]\.jpeg\.quality"),
        ({"name": "a", "jpeg": {}, "noise": {}, "orders": [["jpeg"]]}, r"stages\[0\]\.orders"),
    ],
)
def test_bad_values_raise_value_error_naming_the_key(stage: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RealESRGANDegradation(stages=[stage, _final()])


def test_last_stage_must_land_on_lq_size() -> None:
    with pytest.raises(ValueError, match="must always run and end at the LQ size"):
        RealESRGANDegradation(stages=[{"name": "only", "jpeg": {}}])
    with pytest.raises(ValueError, match="unique"):
        RealESRGANDegradation(stages=[{"name": "final", "jpeg": {}}, _final()])


def test_bad_inputs_raise_clear_errors(photos: torch.Tensor) -> None:
    deg = load_preset("osediff")
    record = deg.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="divisible by the scale"):
        deg.apply(photos[:2, :, :126, :126], record)
    with pytest.raises(ValueError, match="record is for 2 samples"):
        deg.apply(photos[:3], record)
    with pytest.raises(KeyError, match="different configuration"):
        load_preset("s3diff").apply(photos[:2], DegradationRecord(2, {"clean": [False, False]}))
