"""LQFM (CODSR): sizes from the backbone, identity at init, gradients, λ_t = 1/w_t, hook formula."""
from __future__ import annotations

import pytest
import torch

from lit_sr.config.build import build_generator
from lit_sr.model.modulation import LQFM


def _randomise_last_layers(mod: LQFM, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branch in (mod.scale, mod.shift):
            for p in branch[-1].parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_sizes_follow_the_backbone(tiny_bb):
    mod = LQFM()
    mod.attach(tiny_bb)
    f = tiny_bb.vae_scale_factor  # 4 on the tiny VAE (8 on SD: 192 input channels)
    assert mod.scale[0].in_channels == 3 * f * f
    assert mod.scale[-1].out_channels == tiny_bb.denoiser.net.conv_in.out_channels
    gamma, beta = mod(torch.rand(2, 3, 64, 48) * 2 - 1)
    assert gamma.shape == beta.shape == (2, tiny_bb.denoiser.net.conv_in.out_channels, 64 // f, 48 // f)
    assert torch.count_nonzero(gamma) == 0 and torch.count_nonzero(beta) == 0  # zero-initialised
    wide = LQFM(hidden=7)
    wide.attach(tiny_bb)
    assert wide.scale[0].out_channels == 7


def test_identity_at_init_and_trainable_state(make_cfg, tiny_bb):
    g = build_generator(make_cfg("modulation=lqfm", "noise=rgpa"), tiny_bb).eval()
    keys = [k for k in g.trainable_state_dict() if k.startswith("modulation.")]
    assert keys and all(p.requires_grad for n, p in g.named_parameters() if n.startswith("modulation."))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([100, 300])
    ehs = g.conditioner(x, None)
    with torch.no_grad():
        plain = g.denoise(z, t, ehs, None)
        modulated = g.denoise(z, t, ehs, g.modulation_maps(x, t))
    assert torch.equal(plain, modulated)


def test_gradients_reach_the_sft(make_cfg, tiny_bb):
    g = build_generator(make_cfg("modulation=lqfm", "noise=rgpa", "lora.vae=null"), tiny_bb).train()
    torch.manual_seed(1)
    lq = torch.rand(2, 3, 16, 16)
    out = g.step(lq, hq=torch.rand(2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    out.sr.mean().backward()
    for branch in (g.modulation.scale, g.modulation.shift):
        assert branch[-1].weight.grad is not None and branch[-1].weight.grad.abs().sum() > 0
    # one optimiser step moves the zero layers, after which the first layers get gradients too
    opt = torch.optim.SGD(g.modulation.parameters(), lr=1.0)
    opt.step()
    opt.zero_grad()
    g.step(lq, generator=torch.Generator().manual_seed(0)).sr.mean().backward()
    assert g.modulation.scale[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("noise", ["uniform", "rgpa", "ldg"])
def test_strength_is_one_over_w_t_and_hook_applies_it(make_cfg, tiny_bb, noise):
    g = build_generator(make_cfg("modulation=lqfm", f"noise={noise}"), tiny_bb).eval()
    _randomise_last_layers(g.modulation)
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    t = torch.tensor([100, 700])
    a = g.noise.parameterisation.alpha_bar(t)
    lam = a.sqrt() / (1 - a).sqrt()  # 1/w_t
    torch.testing.assert_close(g.noise.modulation_strength(t), lam)
    with torch.no_grad():
        gamma, beta = g.modulation(x, t)
        lg, lb = g.modulation_maps(x, t)
    torch.testing.assert_close(lg, lam[:, None, None, None] * gamma)
    torch.testing.assert_close(lb, lam[:, None, None, None] * beta)
    # the forward hook after conv_in computes h·(1 + λγ) + λβ
    z = torch.randn(2, 4, 16, 16)
    seen = []
    handle = g.denoiser.net.conv_in.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    with torch.no_grad():
        g.denoise(z, t, g.conditioner(x, None), (lg, lb))
        h = g.denoiser.net.conv_in(z)
    handle.remove()
    torch.testing.assert_close(seen[0], h * (1 + lg) + lb)
    assert lam[0] > lam[1]  # less injected noise (small t) → stronger LQ guidance


def test_tiled_modulation_matches_untiled(make_cfg, tiny_bb):
    g = build_generator(make_cfg("modulation=lqfm", "noise=rgpa", "model.tile_latent=16", "model.tile_overlap=8"),
                        tiny_bb).eval()
    _randomise_last_layers(g.modulation, seed=3)
    y, xx = torch.meshgrid(torch.linspace(0, 3, 32), torch.linspace(0, 3, 32), indexing="ij")
    lq = torch.stack([torch.sin(xx + y), torch.cos(xx * 1.3), torch.sin(y * 0.7)])[None] * 0.4 + 0.5
    with torch.no_grad():
        tiled = g.step(lq, generator=torch.Generator().manual_seed(0)).sr
        g.tile_latent = None
        full = g.step(lq, generator=torch.Generator().manual_seed(0)).sr
    mse = (tiled - full).pow(2).mean()
    assert 10 * torch.log10(1 / mse) > 30


def test_lqfm_on_the_mmdit_modulates_patch_tokens(make_cfg, tiny_sd3_bb):
    """On an MM-DiT the maps live on the patch grid (latent / 2) with the transformer's width, after the
    patch embedding, scaled by λ_t = (1−σ_t)/σ_t."""
    g = build_generator(make_cfg("backbone=tiny_sd3", "modulation=lqfm", "noise=rgpa"), tiny_sd3_bb).eval()
    mod, d = g.modulation, g.denoiser
    assert mod.factor == g.vae_scale_factor * d.patch == 8 and mod.scale[0].in_channels == 3 * 8 * 8
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    t = torch.tensor([100, 500])
    gamma, beta = mod(x)
    assert gamma.shape == (2, d.modulation_channels, 8, 6)  # latent 16×12 → patch grid 8×6
    _randomise_last_layers(mod)
    lg, lb = g.modulation_maps(x, t)
    sigma = g.parameterisation.sigma(t)
    torch.testing.assert_close(lg, ((1 - sigma) / sigma)[:, None, None, None] * mod(x)[0])
    z = torch.randn(2, 16, 16, 12)
    cond = g.conditioner(x, None)
    with torch.no_grad():
        assert not torch.allclose(g.denoise(z, t, cond, (lg, lb)), g.denoise(z, t, cond, None))


def test_lqfm_with_a_pure_noise_timestep_on_flow_is_refused(make_cfg):
    from lit_sr.errors import ConfigError

    with pytest.raises(ConfigError, match="λ_t = \\(1−σ_t\\)/σ_t, which is 0") as exc:
        make_cfg("backbone=tiny_sd3", "modulation=lqfm", "noise=uniform")
    assert "\n" not in str(exc.value)
    make_cfg("backbone=tiny", "modulation=lqfm", "noise=uniform")  # fine on the UNet: λ_999 ≈ 0.07
