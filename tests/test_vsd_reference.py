"""VSD against an independent reference of OSEDiff's formula, on both families (ε and flow matching).

The reference below is written from the published formula, not from ``losses/vsd.py``: the noise
schedule comes from diffusers' own schedulers (``DDPMScheduler``'s ᾱ, ``FlowMatchEulerDiscreteScheduler``'s
σ and timesteps), the real score is the denoiser with every adapter disabled and the fake score the
denoiser with only the fake adapter, both switched through diffusers/peft's public API on copies:

    t ~ U[20, 980),  z_t = a_t·ẑ + b_t·n
    p = p_u + 7.5·(p_c − p_u)                 (real score, negative prompt vs the generator's condition)
    x₀ = (z_t − √(1−ᾱ)·ε̂)/√ᾱ  (ε)    or    x₀ = z_t − σ·v̂  (flow)
    w = mean_{C,H,W} |ẑ − x₀_real|,   loss = MSE(ẑ, sg(ẑ − (x₀_fake − x₀_real)/w))

and the fake score's own loss is the denoising MSE on sg(ẑ) at t ~ U[0, 1000): against ε, or
against v = n − ẑ for flow matching.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lit_sr.config.systems import build_system

CASES = {"epsilon": "tiny", "flow": "tiny_sd3"}


def _perturb_fake(net: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n and ".vsd_fake." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _schedule(kind: str, t: torch.Tensor):
    """(a_t, b_t, what the network is told) from diffusers' schedulers, for integer t."""
    if kind == "epsilon":
        from diffusers import DDPMScheduler

        abar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[t]
        return abar.sqrt(), (1 - abar).sqrt(), t
    from diffusers import FlowMatchEulerDiscreteScheduler

    fm = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sigma = fm.sigmas[999 - t]  # the table runs from σ = 1 down
    return 1 - sigma, sigma, fm.timesteps[999 - t]


def _call(kind: str, net, z, told, tokens, pooled):
    if kind == "epsilon":
        return net(z, told, encoder_hidden_states=tokens).sample
    return net(hidden_states=z, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=told).sample


def _x0(kind: str, pred, z_t, a, b):
    return (z_t - b * pred) / a if kind == "epsilon" else z_t - b * pred


@pytest.mark.parametrize("kind", list(CASES))
def test_vsd_loss_gradient_and_fake_loss_match_the_reference(kind, make_cfg, tiny_bb, tiny_sd3_bb):
    bb = tiny_bb if kind == "epsilon" else tiny_sd3_bb
    cfg = make_cfg(f"backbone={CASES[kind]}", "loss=osediff_vsd", "conditioning=text", "conditioning.prompt=a photo",
                   "conditioning.negative_prompt=blurry", "val.metrics=[psnr]")
    system = build_system(cfg, backbone=bb)
    g, vsd = system.generator, system.losses["vsd"]
    _perturb_fake(g.denoiser.net)  # the fake score differs from the real one
    real_net, fake_net = copy.deepcopy(g.denoiser.net), copy.deepcopy(g.denoiser.net)
    real_net.disable_adapters()
    fake_net.set_adapter("vsd_fake")

    b, c = 2, bb.latent_channels
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(b, c, 8, 8, generator=gen)
    cond = g.conditioner(torch.zeros(b, 3, 32, 32), None).detach()
    neg = bb.prompts.encode(["blurry"]).expand(b)
    from lit_sr.model.output import SROutput

    out = SROutput(sr=torch.rand(b, 3, 32, 32), z_hat=z.clone().requires_grad_(True), z_lq=z, t=torch.full((b,), 999),
                   pred=z, cond=cond, lq_up=torch.rand(b, 3, 32, 32), z_in=z)
    loss = vsd(out, {"rng": torch.Generator().manual_seed(5)})
    loss.backward()

    # ---- the reference, replaying the same draws: u ~ U[0, 1) (float64) for t, then n ~ N(0, 1)
    rng = torch.Generator().manual_seed(5)
    u = torch.rand(b, generator=rng, dtype=torch.float64)
    t = (20 + (u * 960).floor()).long()
    n = torch.randn(z.shape, generator=rng)
    a, s, told = _schedule(kind, t)
    a, s = a.float()[:, None, None, None], s.float()[:, None, None, None]
    z_ref = z.clone().requires_grad_(True)
    with torch.no_grad():
        z_t = a * z + s * n
        p_u = _call(kind, real_net, z_t, told, neg.tokens, neg.pooled)
        p_c = _call(kind, real_net, z_t, told, cond.tokens, cond.pooled)
        x0_real = _x0(kind, p_u + 7.5 * (p_c - p_u), z_t, a, s)
        x0_fake = _x0(kind, _call(kind, fake_net, z_t, told, cond.tokens, cond.pooled), z_t, a, s)
        w = (z - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
        target = z - (x0_fake - x0_real) / w
    ref = F.mse_loss(z_ref, target)
    ref.backward()
    assert (x0_fake - x0_real).abs().max() > 1e-4
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-7)
    scale = float(z_ref.grad.abs().max())  # float32 rounding of near-zero elements: bound it by the largest
    torch.testing.assert_close(out.z_hat.grad, z_ref.grad, rtol=1e-4, atol=1e-4 * scale)

    # ---- the fake score's own loss: t ~ U[0, 1000), then n; its target is ε (ε) or n − ẑ (flow)
    aux = vsd.aux_loss(out, {"rng": torch.Generator().manual_seed(9)})
    rng = torch.Generator().manual_seed(9)
    t = torch.randint(0, 1000, (b,), generator=rng)
    n = torch.randn(z.shape, generator=rng)
    a, s, told = _schedule(kind, t)
    a, s = a.float()[:, None, None, None], s.float()[:, None, None, None]
    with torch.no_grad():
        pred = _call(kind, fake_net, a * z + s * n, told, cond.tokens, cond.pooled)
    expected = F.mse_loss(pred, n if kind == "epsilon" else n - z)
    torch.testing.assert_close(aux.detach(), expected, rtol=1e-4, atol=1e-7)
