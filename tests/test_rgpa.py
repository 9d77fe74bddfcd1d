"""RGPA (CODSR): the gradient weight map, the noise it injects, the x0 update and the t knob."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_sr.model.noise.base import NoiseContext
from lit_sr.model.noise.rgpa import RGPANoise, gradient_weight, patch_weight
from lit_sr.model.parameterisation import SD_SCHEDULER, from_scheduler_config


@pytest.fixture(scope="module")
def rgpa() -> RGPANoise:
    noise = RGPANoise()
    noise.attach(from_scheduler_config(SD_SCHEDULER))
    return noise


def _img(v: torch.Tensor) -> torch.Tensor:
    """Gray values in [0, 1] (H, W) → an RGB batch in [-1, 1] (R = G = B, so gray = v)."""
    return (v * 2 - 1).expand(1, 3, *v.shape).clone()


def _ctx(img: torch.Tensor, latent_hw: tuple[int, int], batch: int = 1, gen=None) -> NoiseContext:
    return NoiseContext(lq_up=img.expand(batch, -1, -1, -1), z_lq=torch.zeros(batch, 4, *latent_hw),
                        training=False, generator=gen)


def test_flat_image_gives_low_weight_everywhere():
    w = gradient_weight(_img(torch.full((64, 48), 0.6)))
    assert w.shape == (1, 1, 4, 3)
    assert torch.equal(w, torch.full_like(w, 0.3))


def test_strong_texture_gives_full_weight():
    # 2-px stripes: |gx| = 4 everywhere (a 1-px checkerboard would be invisible to Sobel)
    stripes = ((torch.arange(64) // 2) % 2).float().expand(64, 64)
    w = gradient_weight(_img(stripes))
    assert torch.equal(w, torch.ones_like(w))


def test_piecewise_map_values_and_slope():
    p = torch.tensor([0.0, 0.1, 0.15, 0.16, 0.2, 0.24, 0.25, 0.3, 2.0], dtype=torch.float64)
    expected = torch.tensor([0.3, 0.3, 0.3, 0.37, 0.65, 0.93, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(patch_weight(p), expected)


def test_ramp_crosses_linear_segment_with_slope_7():
    # A horizontal gray ramp of step a per pixel: Sobel |gx| = 8a inside, 4a in the two border
    # columns (replicate padding), |gy| = 0 → a 16-px patch averages p = (14·8a + 2·4a)/16 = 7.5a.
    ps, ws = [], []
    for p in (0.10, 0.17, 0.19, 0.21, 0.23, 0.30):
        a = p / 7.5
        ramp = (torch.arange(16, dtype=torch.float32) * a).expand(16, 16)
        ps.append(p)
        ws.append(float(gradient_weight(_img(ramp))[0, 0, 0, 0]))
    assert ws[0] == pytest.approx(0.3) and ws[-1] == pytest.approx(1.0)
    for p, w in zip(ps[1:-1], ws[1:-1]):
        assert w == pytest.approx(7 * (p - 0.15) + 0.3, abs=1e-4)
    slopes = [(w2 - w1) / (p2 - p1) for p1, p2, w1, w2 in zip(ps[1:-2], ps[2:-1], ws[1:-2], ws[2:-1])]
    assert slopes == pytest.approx([7.0] * len(slopes), abs=1e-2)


@pytest.mark.parametrize("latent_hw, per_patch", [((16, 16), 4), ((8, 8), 2)])  # VAE factor 4 (tiny), 8 (SD)
def test_weight_has_latent_resolution_and_is_aligned(rgpa, latent_hw, per_patch):
    torch.manual_seed(0)
    v = torch.full((64, 64), 0.5)
    v[:, :32] = torch.rand(64, 32)  # textured left half, flat right half
    w = rgpa.weight(_ctx(_img(v), latent_hw))
    h, wd = latent_hw
    assert w.shape == (1, 1, h, wd)
    assert torch.all(w[..., : wd // 2] == 1.0)
    torch.testing.assert_close(w[..., wd // 2 :], torch.full_like(w[..., wd // 2 :], 0.3))
    # each 16-px patch is a constant block of per_patch × per_patch latent pixels
    blocks = w[0, 0].unfold(0, per_patch, per_patch).unfold(1, per_patch, per_patch)
    assert torch.all(blocks == blocks[..., :1, :1])


def test_injected_noise_std_follows_sqrt_one_minus_abar_times_weight(rgpa):
    torch.manual_seed(1)
    v = torch.full((64, 64), 0.5)
    v[:, :32] = torch.rand(64, 32)
    img = _img(v)
    n = 800
    ctx = _ctx(img, (16, 16), batch=n, gen=torch.Generator().manual_seed(3))
    t = torch.full((n,), 300)
    z_t = rgpa.denoiser_input(ctx, t)
    aux = ctx.extras
    a = float(rgpa.parameterisation.alpha_bar(t[:1]))
    noise_part = z_t - a ** 0.5 * ctx.z_lq  # z_L = 0 here, kept for clarity
    std = noise_part.std(dim=0)  # per latent pixel and channel, over draws
    expected = (1 - a) ** 0.5 * aux["rgpa_weight"][0]
    ratio = std / expected
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)
    assert (ratio - 1).abs().max() < 0.2
    # textured pixels really get more noise than flat ones (0.3 vs 1.0 weight)
    assert std[..., :8].mean() / std[..., 8:].mean() == pytest.approx(1 / 0.3, rel=0.05)


def test_eps_hat_equal_to_injected_noise_returns_lq_latent_exactly(rgpa):
    torch.manual_seed(2)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    ctx = NoiseContext(lq_up=img, z_lq=torch.randn(2, 4, 16, 16), training=False, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 400])
    z_t = rgpa.denoiser_input(ctx, t)
    aux = ctx.extras
    assert torch.equal(rgpa.to_x0(ctx, t, z_t, aux["eps"]), ctx.z_lq)
    # any ε̂: the DDPM x0 estimate from z_t, written around z_L
    eps_hat = torch.randn_like(z_t)
    a = rgpa.parameterisation.alpha_bar(t)[:, None, None, None]
    torch.testing.assert_close(rgpa.to_x0(ctx, t, z_t, eps_hat), (z_t - (1 - a).sqrt() * eps_hat) / a.sqrt(),
                               rtol=1e-4, atol=1e-4)


def test_training_timesteps_range_and_seed(rgpa):
    img = torch.zeros(64, 3, 32, 32)
    ctx = NoiseContext(lq_up=img, z_lq=torch.zeros(64, 4, 8, 8), training=True, generator=torch.Generator().manual_seed(5))
    t1 = rgpa.timesteps(ctx)
    assert t1.dtype == torch.long and t1.min() >= 50 and t1.max() <= 250 and len(set(t1.tolist())) > 10
    ctx.generator = torch.Generator().manual_seed(5)
    assert torch.equal(rgpa.timesteps(ctx), t1)
    ctx.generator = None  # inference-style call without a generator still works
    assert rgpa.denoiser_input(ctx, t1).shape == ctx.z_lq.shape


def test_knob_parsing(rgpa):
    assert rgpa.parse_knob(None) == 100
    assert rgpa.parse_knob("250") == 250 and rgpa.parse_knob(7) == 7 and rgpa.parse_knob(rgpa.parse_knob("42")) == 42
    for bad in ("abc", "1000", -1, 2.5, True, "fidelity"):
        with pytest.raises(ValueError, match="rgpa"):
            rgpa.parse_knob(bad)
    assert rgpa.knob_values() == [50, 100, 200, 300, 400]
    ctx = NoiseContext(lq_up=torch.zeros(2, 3, 32, 32), z_lq=torch.zeros(2, 4, 8, 8), training=False, knob="300")
    assert rgpa.timesteps(ctx).tolist() == [300, 300]


def test_bad_config_values_fail_at_build(make_cfg, tiny_bb):
    from lit_sr.config.build import build_generator
    from lit_sr.errors import ConfigError

    with pytest.raises(ConfigError, match="t_min"):
        build_generator(make_cfg("noise=rgpa", "noise.t_min=300", "noise.t_max=200"), tiny_bb)


def _photo_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from datamodules.skimage_photos import TRAIN_PHOTOS, photo_array

    gen = torch.Generator().manual_seed(seed)
    photos = [torch.from_numpy(photo_array(name)).permute(2, 0, 1).float() / 255 for name in TRAIN_PHOTOS[:4]]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        y = int(torch.randint(img.shape[1] - 64, (1,), generator=gen))
        x = int(torch.randint(img.shape[2] - 64, (1,), generator=gen))
        crops.append(img[:, y : y + 64, x : x + 64])
    hq = torch.stack(crops)
    return F.interpolate(hq, scale_factor=0.25, mode="area"), hq


def test_knob_is_monotone_on_a_trained_tiny_model(make_cfg, tiny_bb):
    """A larger t departs further from the LQ-only reconstruction decode(z_L)."""
    from lit_sr.config.build import build_generator

    torch.manual_seed(0)
    g = build_generator(make_cfg("noise=rgpa", "lora.vae=null"), tiny_bb)
    lq, hq = _photo_pairs(8)
    opt = torch.optim.AdamW([p for p in g.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    g.train()
    for step in range(16):
        idx = torch.arange(step * 2, step * 2 + 2) % len(lq)
        out = g.step(lq[idx], hq=hq[idx], generator=gen)
        loss = F.mse_loss(out.sr, hq[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    g.eval()
    ts = [50, 150, 300, 500, 800]
    dist = []
    with torch.no_grad():
        base = (g.decode(g.encode(g.upsample(lq) * 2 - 1)) + 1) / 2
        for t in ts:
            sr = g.step(lq, knob=str(t), generator=torch.Generator().manual_seed(11)).sr
            dist.append(float((sr - base).abs().mean()))
    assert all(d1 < d2 for d1, d2 in zip(dist, dist[1:])), dict(zip(ts, dist))


def test_flow_rgpa_injects_weighted_noise_in_sigma():
    """On a flow-matching backbone RGPA's map weights the noise of z_t = (1−σ)·z_L + σ·ε_a (docs/backbones.md)."""
    from lit_sr.model.parameterisation import FlowMatching

    param = FlowMatching(1000, 3.0)
    rgpa = RGPANoise()
    rgpa.attach(param)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    lq[..., :, :32] = 0.0  # a flat half (low weight) beside a noisy one (high weight)
    z = torch.randn(1, 4, 16, 16, generator=g)
    ctx = NoiseContext(lq_up=lq, z_lq=z, training=False, knob=250, generator=torch.Generator().manual_seed(5))
    t = rgpa.timesteps(ctx)
    z_t = rgpa.denoiser_input(ctx, t)
    sigma = 3 * 0.251 / (1 + 2 * 0.251)  # σ at t = 250, shift 3
    weight = ctx.extras["rgpa_weight"]
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ctx.extras["eps"], weight * eps)
    torch.testing.assert_close(z_t, (1 - sigma) * z + sigma * weight * eps)
    assert float(weight[..., :, :4].max()) == pytest.approx(0.3) and float(weight[..., :, 12:].min()) == 1.0
    v = torch.randn_like(z)
    torch.testing.assert_close(rgpa.to_x0(ctx, t, z_t, v), z_t - sigma * v, rtol=1e-5, atol=1e-5)
    assert torch.allclose(rgpa.to_x0(ctx, t, z_t, weight * eps - z), z, atol=1e-6)  # the true velocity gives z_L
