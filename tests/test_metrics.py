"""Metrics: PSNR/SSIM against skimage, DISTS, NIQE, pyiqa availability, MetricSuite, DDP sync."""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from skimage import data, filters
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lit_sr.errors import WeightsError
from lit_sr.metrics import (
    DISTS,
    NIQE,
    PSNR,
    SSIM,
    DISTSMetric,
    LPIPSMetric,
    MetricSuite,
    MetricUnavailable,
    MetricWeights,
    PyiqaMetric,
)
from lit_sr.metrics import base as metrics_base
from lit_sr.metrics.color import rgb_to_luma, rgb_to_y
from lit_sr.metrics.imresize import imresize, resize_matrix
from lit_sr.metrics.niqe import load_pristine_params, niqe


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC → float64 (1, 3, H, W) in [0, 1] (exact k/255 levels)."""
    return torch.from_numpy(img.astype(np.float64) / 255).permute(2, 0, 1)[None]


def blurred(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur, re-quantised to 8 bits like a saved image."""
    arr = img[0].permute(1, 2, 0).numpy()
    out = np.round(filters.gaussian(arr, sigma=sigma, channel_axis=2) * 255) / 255
    return torch.from_numpy(out).permute(2, 0, 1)[None]


def noisy(img: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + std * torch.randn(img.shape, generator=g, dtype=img.dtype)).clamp(0, 1).mul(255).round().div(255)


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return to_tensor(data.astronaut())


def _np(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------ PSNR / SSIM vs skimage


@pytest.mark.parametrize("y_channel", [True, False])
@pytest.mark.parametrize("border", [0, 4])
def test_psnr_ssim_equal_skimage(y_channel, border):
    hq = torch.cat([to_tensor(data.astronaut()[:120, :160]), to_tensor(data.coffee()[:120, :160])])
    sr = torch.cat([noisy(hq[:1], 0.05), blurred(hq[1:], 1.5)])
    psnr, ssim = PSNR(crop_border=border, y_channel=y_channel), SSIM(crop_border=border, y_channel=y_channel)
    psnr.update(sr[:1], hq[:1])
    psnr.update(sr[1:], hq[1:])
    ssim.update(sr, hq)
    ref_p, ref_s = [], []
    for i in range(2):
        a, b = sr[i : i + 1], hq[i : i + 1]
        if y_channel:
            a, b = rgb_to_y(a), rgb_to_y(b)
        a, b = _np(a), _np(b)
        if border:
            a, b = a[border:-border, border:-border], b[border:-border, border:-border]
        ref_p.append(peak_signal_noise_ratio(b, a, data_range=1.0))
        # The reference SSIM (Wang et al. MATLAB code, BasicSR): 11x11 Gaussian sigma 1.5,
        # population covariances, valid region only, channel mean.
        ref_s.append(
            structural_similarity(
                b, a, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=2
            )
        )
    # Both are float64 computations of the same formula: agreement is to rounding error.
    assert float(psnr.compute()) == pytest.approx(np.mean(ref_p), abs=1e-9)
    assert float(ssim.compute()) == pytest.approx(np.mean(ref_s), abs=1e-9)


def test_y_channel_is_bt601_studio_range():
    black, white = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    assert float(rgb_to_y(black)) == pytest.approx(16 / 255)
    assert float(rgb_to_y(white)) == pytest.approx(235 / 255, abs=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert float(rgb_to_y(red)) == pytest.approx((16 + 65.481) / 255)
    assert float(rgb_to_luma(white)) == pytest.approx(1.0)


def test_identical_images_give_capped_psnr_and_unit_ssim(astronaut):
    x = astronaut[..., :64, :64]
    psnr, ssim = PSNR(), SSIM()
    psnr.update(x, x)
    ssim.update(x, x)
    assert float(psnr.compute()) == pytest.approx(100.0)  # finite cap, not inf
    assert float(ssim.compute()) == pytest.approx(1.0)


def test_full_reference_bad_inputs(astronaut):
    x = astronaut[..., :64, :64]
    m = PSNR()
    with pytest.raises(ValueError, match="shapes differ"):
        m.update(x, x[..., :32])
    with pytest.raises(ValueError, match="RGB"):
        m.update(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="float"):
        m.update((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="needs the HQ"):
        m.update(x)
    with pytest.raises(ValueError, match="too small"):
        PSNR(crop_border=40).update(x, x)
    with pytest.raises(ValueError, match="11x11"):
        SSIM(crop_border=28).update(x, x)
    with pytest.raises(ValueError, match="crop_border"):
        SSIM(crop_border=-1)


def test_values_are_clamped_to_the_image_range(astronaut):
    x = astronaut[..., :64, :64]
    over = x * 1.5 - 0.25  # out-of-range SR output scores as its saved (clipped) image
    a, b = PSNR(), PSNR()
    a.update(over, x)
    b.update(over.clamp(0, 1), x)
    assert float(a.compute()) == float(b.compute())


# ------------------------------------------------------------------------ DISTS


@pytest.fixture(scope="module")
def dists_model() -> DISTS:
    return DISTS(seed=0)


def test_dists_zero_for_identical_and_grows_with_distortion(dists_model, astronaut):
    x = astronaut[..., 100:164, 150:214].float()
    assert abs(float(dists_model(x, x)[0])) < 1e-6
    levels = torch.cat([noisy(x.double(), s).float() for s in (0.02, 0.05, 0.1, 0.2)])
    d = dists_model(levels, x.expand_as(levels))
    assert torch.all(d[1:] > d[:-1]), d
    blur = torch.cat([blurred(x.double(), s).float() for s in (0.5, 1, 2, 3)])
    d = dists_model(blur, x.expand_as(blur))
    assert torch.all(d[1:] > d[:-1]), d


def test_dists_loads_alpha_beta_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    ab = {"alpha": torch.rand(1, 1475, 1, 1, generator=g), "beta": torch.rand(1, 1475, 1, 1, generator=g)}
    path = tmp_path / "weights.pt"
    torch.save(ab, path)
    model = DISTS(dists_weights=str(path))
    assert torch.equal(model.alpha, ab["alpha"]) and torch.equal(model.beta, ab["beta"])
    torch.save({"alpha": ab["alpha"]}, path)
    with pytest.raises(WeightsError, match="'beta' missing"):
        DISTS(dists_weights=str(path))
    torch.save({"alpha": ab["alpha"][:, :100], "beta": ab["beta"]}, path)
    with pytest.raises(WeightsError, match="shape"):
        DISTS(dists_weights=str(path))


def test_weighted_metrics_unavailable_without_files():
    with pytest.raises(MetricUnavailable, match="dists_weights"):
        DISTSMetric(vgg_weights="/some/vgg16.pth")
    with pytest.raises(MetricUnavailable, match="vgg_weights and lpips_weights"):
        LPIPSMetric()


def test_frozen_networks_stay_out_of_checkpoints():
    m = LPIPSMetric(allow_random=True)
    assert not any(k.startswith("net.") for k in m.state_dict())
    other = LPIPSMetric(allow_random=True)
    with torch.no_grad():
        other.net.lin0.model[1].weight.fill_(7.0)
    other.load_state_dict(m.state_dict(), strict=True)  # nothing missing, and the net is untouched
    assert float(other.net.lin0.model[1].weight.mean()) == 7.0


# ------------------------------------------------------------------------ NIQE


def test_niqe_prefers_the_pristine_photo_and_is_monotone_in_blur(astronaut):
    clean = float(niqe(astronaut)[0])
    blurs = [float(v) for v in niqe(torch.cat([blurred(astronaut, s) for s in (1.0, 2.0, 3.0)]))]
    noise = float(niqe(noisy(astronaut, 0.08))[0])
    assert clean < blurs[0] < blurs[1] < blurs[2], (clean, blurs)
    assert clean < noise, (clean, noise)


def test_niqe_regression_value(astronaut):
    # Computed once with this implementation on skimage's astronaut (512x512, exact k/255
    # levels, Y of BT.601, no crop). Cross-check with BasicSR 1.4.2's calculate_niqe on the same
    # image (BGR uint8, crop_border=0), run from its source package:
    #   * as released: 3.064948 — its MSCN runs in float32 (scipy convolve keeps the input
    #     dtype), and the variance E[x²]-E[x]² of 0..255 values loses digits there;
    #   * with the Y image cast to float64 before niqe() (as MATLAB and pyiqa compute):
    #     3.100452 — the 1e-5 left is one pixel whose float32 Y rounds the other way; fed the
    #     same Y image, BasicSR's float64 niqe() and ours agree to 2e-13.
    # On skimage's chelsea the float64 BasicSR run and ours agree to 3e-13 (2.6255266797).
    assert float(niqe(astronaut)[0]) == pytest.approx(3.1004613841, abs=1e-6)
    chelsea = to_tensor(data.chelsea())
    assert float(niqe(chelsea)[0]) == pytest.approx(2.6255266797, abs=1e-8)


def test_niqe_metric_options_and_errors(astronaut):
    m = NIQE(luma="yiq")  # pyiqa's luminance: a different, equally plausible value
    m.update(astronaut)
    assert m.display_name == "NIQE↓" and m.higher_is_better is False
    yiq = float(m.compute())
    assert yiq != pytest.approx(3.1004613841, abs=1e-3) and 2.5 < yiq < 3.5
    with pytest.raises(ValueError, match="two 96x96 patches"):
        NIQE().update(astronaut[..., :96, :150])
    with pytest.raises(WeightsError, match="not found"):
        NIQE(params_path="/nowhere/niqe.npz")
    params = load_pristine_params()
    assert params["mu"].shape == (36,) and params["cov"].shape == (36, 36)
    assert float(params["window"].sum()) == pytest.approx(1.0)


def test_matlab_imresize_half():
    m = resize_matrix(96, 0.5)
    assert m.shape == (48, 96)
    assert torch.allclose(m.sum(1), torch.ones(48, dtype=torch.float64))
    # Symmetric cubic weights reproduce a linear ramp exactly away from the mirrored borders.
    ramp = torch.arange(96, dtype=torch.float64)
    out = m @ ramp
    centres = torch.arange(48, dtype=torch.float64) * 2 + 0.5  # MATLAB: output pixel k ↔ input 2k+0.5
    assert torch.allclose(out[3:-3], centres[3:-3], atol=1e-10)
    img = torch.full((1, 50, 70), 0.3, dtype=torch.float64)
    assert torch.allclose(imresize(img, 0.5), torch.full((1, 25, 35), 0.3, dtype=torch.float64))


# ------------------------------------------------------------------------ pyiqa


def test_pyiqa_metrics_report_why_they_are_unavailable(tmp_path, monkeypatch):
    for name in ("musiq", "maniqa", "clipiqa"):
        with pytest.raises(MetricUnavailable, match="weights directory"):
            PyiqaMetric(name)
    with pytest.raises(MetricUnavailable, match="not found"):
        PyiqaMetric("musiq", weights_dir=str(tmp_path / "absent"))
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # importing it now fails, installed or not
    with pytest.raises(MetricUnavailable, match="pyiqa is not importable") as err:
        PyiqaMetric("maniqa", weights_dir=str(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown pyiqa metric"):
        PyiqaMetric("brisque", weights_dir=str(tmp_path))


# ------------------------------------------------------------------------ MetricSuite


def test_suite_reports_unavailable_once_and_leaves_them_out(astronaut, monkeypatch, caplog):
    monkeypatch.setattr(metrics_base, "_warned", set())
    names = ["psnr", "ssim", "lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa"]
    with caplog.at_level(logging.WARNING, logger="lit_sr.metrics"):
        suite = MetricSuite(names)
        MetricSuite(names)  # a second suite in the same process says nothing new
    warned = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warned) == 5 and all("\n" not in w for w in warned)
    assert suite.names == ["psnr", "ssim", "niqe"]
    assert set(suite.unavailable) == {"lpips", "dists", "musiq", "maniqa", "clipiqa"}
    hq = astronaut[..., :192, :192]
    suite.update(blurred(hq, 1.0), hq)
    result = suite.compute()
    assert set(result) == {"psnr", "ssim", "niqe"} and all(isinstance(v, float) for v in result.values())
    assert suite.display_names == {"psnr": "PSNR↑", "ssim": "SSIM↑", "niqe": "NIQE↓"}
    assert suite.higher_is_better == {"psnr": True, "ssim": True, "niqe": False}
    suite.reset()
    suite.update(hq)  # no HQ: only no-reference metrics see the batch
    assert set(suite.compute()) == {"niqe"}


def test_suite_options_and_random_weights(astronaut):
    suite = MetricSuite(["psnr", "ssim", "lpips", "dists"], scale=2, weights=MetricWeights(allow_random=True))
    assert suite.metrics["psnr"].crop_border == 2 and suite.metrics["ssim"].crop_border == 2
    assert MetricSuite(["psnr"], scale=4, crop_border=0, y_channel=False).metrics["psnr"].crop_border == 0
    assert suite.display_names["lpips"] == "LPIPS↓" and suite.display_names["dists"] == "DISTS↓"
    hq = astronaut[..., :48, :48]  # float64: the networks follow their own dtype
    suite.update(hq, hq)
    res = suite.compute()
    # random network weights are reported as such, never under the calibrated metric's name
    assert "lpips" not in res and "dists" not in res
    assert res["lpips_uncalibrated"] == 0.0 and abs(res["dists_uncalibrated"]) < 1e-6 and res["ssim"] == pytest.approx(1.0)
    assert not any(".net." in k for k in suite.state_dict())
    with pytest.raises(ValueError, match="unknown metric"):
        MetricSuite(["psnr", "fid"])
    with pytest.raises(ValueError, match="repeat"):
        MetricSuite(["psnr", "psnr"])


# ------------------------------------------------------------------------ DDP


DDP_NAMES = ["psnr", "ssim", "lpips", "niqe"]  # LPIPS stands for the frozen-network metrics


def _ddp_images() -> tuple[torch.Tensor, torch.Tensor]:
    photos = (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())
    hq = torch.cat([to_tensor(img[:96, :192]) for img in photos])
    sr = torch.cat([noisy(hq[:2], 0.03), blurred(hq[2:3], 1.0), blurred(hq[3:], 2.0)])
    return sr.float(), hq.float()


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        sr, hq = _ddp_images()
        suite = MetricSuite(DDP_NAMES, weights=MetricWeights(allow_random=True))
        # Uneven split (3 images on rank 0 in two batches, 1 on rank 1): a mean of per-rank
        # means would be wrong, only summed states give the single-process value.
        batches = [slice(0, 2), slice(2, 3)] if rank == 0 else [slice(3, 4)]
        for b in batches:
            suite.update(sr[b], hq[b])
        result = suite.compute()
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_two_processes_match_one_process(tmp_path):
    sr, hq = _ddp_images()
    single = MetricSuite(DDP_NAMES, weights=MetricWeights(allow_random=True))
    single.update(sr, hq)
    expected = single.compute()
    out = tmp_path / "result.pt"
    # fork: the workers inherit the imported modules (a spawned interpreter spends most of
    # this test importing torchmetrics); each worker runs single-threaded, as DataLoader workers do.
    args = (2, str(tmp_path / "init"), str(out))
    mp.start_processes(_ddp_worker, args=args, nprocs=2, join=True, start_method="fork")
    got = torch.load(out)
    assert set(got) == set(expected) == {single.report_name(n) for n in DDP_NAMES}
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
