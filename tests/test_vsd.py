"""VSD: the gradient formula, shared base weights, fake-adapter isolation, DAS ranges."""
from __future__ import annotations

import pytest
import torch

from lit_sr.config.build import build_generator
from lit_sr.config.systems import build_system
from lit_sr.model.adapters import only_trainable
from lit_sr.model.output import SROutput
from losses.vsd import VSDLoss


def _system(make_cfg, tiny_bb, *overrides: str):
    cfg = make_cfg("loss=osediff_vsd", "loss.terms.lpips=null", "val.metrics=[psnr]", *overrides)
    return build_system(cfg, backbone=tiny_bb)


def _perturb(module, marker: str, seed: int = 0, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n and f".{marker}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _fake_output(generator, b: int = 2, t: torch.Tensor | None = None) -> SROutput:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, 4, 8, 8, generator=g).requires_grad_(True)
    cond = generator.conditioner(torch.zeros(b, 3, 32, 32))
    t = t if t is not None else torch.full((b,), 999)
    return SROutput(sr=torch.rand(b, 3, 32, 32), z_hat=z, z_lq=z.detach(), t=t, pred=z.detach(), cond=cond,
                    lq_up=torch.rand(b, 3, 32, 32), z_in=z.detach())


def test_real_and_fake_scores_are_the_generators_denoiser(make_cfg, tiny_bb):
    system = _system(make_cfg, tiny_bb)
    g, vsd = system.generator, system.losses["vsd"]
    assert list(vsd.parameters()) == []  # no copy of any network inside the term
    assert "vsd_fake" in g.adapters.names("denoiser") and "vsd_fake" not in g.denoiser_adapters
    # Every base weight exists once in the whole system (no duplicated storage).
    base = [p for n, p in g.denoiser.net.named_parameters() if "lora_" not in n]
    ptrs = [p.data_ptr() for p in system.parameters()]
    assert all(ptrs.count(p.data_ptr()) == 1 for p in base)
    own = {id(p) for p in vsd.own_parameters()}
    assert own and own <= {id(p) for p in g.denoiser.net.parameters()}
    # Both score passes run through the generator's denoiser (CFG batched: 2 calls in all).
    calls = []
    hook = g.denoiser.net.register_forward_pre_hook(lambda m, a, kw: calls.append(a[0].shape[0]), with_kwargs=True)
    out = _fake_output(g)
    vsd(out, {"rng": torch.Generator().manual_seed(0)})
    hook.remove()
    assert calls == [4, 2]  # [uncond, cond] for the real score, then the fake score


def test_gradient_is_scaled_fake_minus_real_over_w(make_cfg, tiny_bb):
    system = _system(make_cfg, tiny_bb)
    g, vsd = system.generator, system.losses["vsd"]
    _perturb(g.denoiser.net, "vsd_fake")  # a fake score that differs from the real one
    rng = torch.Generator().manual_seed(7)  # draws replayed below
    t = vsd.sample_timesteps(torch.full((2,), 999), 2, torch.device("cpu"), rng)
    noise = torch.randn(2, 4, 8, 8, generator=rng)
    for mse_scale in (1.0, 0.5):  # OSEDiff's F.mse_loss, DMD2's 0.5·F.mse_loss
        vsd.mse_scale = mse_scale
        out = _fake_output(g)
        vsd(out, {"rng": torch.Generator().manual_seed(7)}).backward()
        x0_real, x0_fake, w = vsd.score_targets(out.z_hat, out.cond, t, noise)
        assert (x0_fake - x0_real).abs().max() > 1e-4
        expected = mse_scale * 2.0 / out.z_hat.numel() * (x0_fake - x0_real) / w
        torch.testing.assert_close(out.z_hat.grad, expected, rtol=1e-4, atol=1e-9)
    # Gradient descent moves ẑ towards the real score's x0, away from the fake one's.
    step = -out.z_hat.grad
    assert float((step * (x0_real - x0_fake)).sum()) > 0


def test_generator_loss_gives_no_gradient_to_the_fake_adapter(make_cfg, tiny_bb):
    system = _system(make_cfg, tiny_bb)
    g, vsd = system.generator, system.losses["vsd"]
    _perturb(g.denoiser.net, "vsd_fake")
    batch = {"lq": torch.rand(2, 3, 8, 8), "hq": torch.rand(2, 3, 32, 32), "rng": torch.Generator().manual_seed(0)}
    out = g.step(batch["lq"], hq=batch["hq"], batch=batch)
    vsd(out, batch).backward()
    assert all(p.grad is None for p in vsd.own_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in g.denoiser.net.named_parameters() if ".main." in n and "lora_" in n)


def test_fake_update_changes_only_the_fake_adapter(make_cfg, tiny_bb):
    system = _system(make_cfg, tiny_bb)
    g, vsd = system.generator, system.losses["vsd"]
    batch = {"lq": torch.rand(2, 3, 8, 8), "hq": torch.rand(2, 3, 32, 32), "rng": torch.Generator().manual_seed(0)}
    with torch.no_grad():
        out = g.step(batch["lq"], hq=batch["hq"], batch=batch)
    before = {n: p.detach().clone() for n, p in system.named_parameters()}
    own = vsd.own_parameters()
    opt = vsd.configure_optimizer(own)
    with only_trainable(system, own):  # the system's aux phase
        aux = vsd.aux_loss(out, batch)
        aux.backward()
        opt.step()
    changed = {n for n, p in system.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".vsd_fake." in n for n in changed)
    assert all(not p.requires_grad for p in own)  # frozen again outside the aux phase
    assert g.adapters.active["denoiser"] == ["main"]  # adapter switches restored the generator's active set


def test_das_timesteps_stay_in_their_window(make_cfg, tiny_bb):
    """One convention for both ranges: t_max is exclusive (OSEDiff's randint(20, 980) never draws 980), so
    the plain range is [20, 979] and DAS's window [max(20, t − k), min(979, t + k)], both ends drawn."""
    system = _system(make_cfg, tiny_bb, "loss.terms.vsd.das.enabled=true", "loss.terms.vsd.das.k=100")
    vsd = system.losses["vsd"]
    t_gen = torch.tensor([30, 249, 500, 749, 999]).repeat_interleave(4000)
    t_r = vsd.sample_timesteps(t_gen, t_gen.numel(), torch.device("cpu"), torch.Generator().manual_seed(0))
    for t, lo, hi in ((30, 20, 130), (249, 149, 349), (500, 400, 600), (749, 649, 849), (999, 899, 979)):
        sel = t_r[t_gen == t]
        assert (int(sel.min()), int(sel.max())) == (lo, hi), t
    plain = VSDLoss()  # sampling needs no network
    t_p = plain.sample_timesteps(None, 20000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert (int(t_p.min()), int(t_p.max())) == (20, 979)


@pytest.mark.parametrize("noise", ["ldg", "rgpa"])
def test_das_follows_per_sample_timesteps_of_ldg_and_rgpa(make_cfg, tiny_bb, noise):
    cfg = make_cfg(f"noise={noise}", "loss=osediff_vsd", "loss.terms.lpips=null", "loss.terms.vsd.das.enabled=true",
                   "loss.terms.vsd.das.k=50", "val.metrics=[psnr]")
    system = build_system(cfg, backbone=tiny_bb)
    g, vsd = system.generator.train(), system.losses["vsd"]
    if g.noise.needs_calibration:  # done by the system before the first training step
        g.noise.calibrate(torch.linspace(0.9, 1.0, 8))
    lq = torch.rand(4, 3, 8, 8)
    out = g.step(lq, hq=torch.rand(4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.t.shape == (4,)
    seen = []
    orig = vsd.score_targets
    vsd.score_targets = lambda z, e, t, n: (seen.append(t), orig(z, e, t, n))[1]
    vsd(out, {"rng": torch.Generator().manual_seed(1)}).backward()
    t_r = seen[0]
    assert bool(((t_r >= (out.t - 50).clamp(min=20)) & (t_r <= (out.t + 50).clamp(max=979))).all())


def test_fake_adapter_exists_from_build_and_negative_prompt_comes_from_the_conditioner(make_cfg, tiny_bb):
    cfg = make_cfg("loss=osediff_vsd", "conditioning=text", "val.metrics=[psnr]")
    g = build_generator(cfg, tiny_bb)
    assert "vsd_fake" in g.adapters.names("denoiser")  # stable checkpoint/export keys
    assert g.adapters.active["denoiser"] == ["main"]
    assert not any(p.requires_grad for p in g.adapters.parameters("denoiser", "vsd_fake").values())
    system = build_system(cfg, generator=g)
    neg = system.losses["vsd"].negative_embedding.get()
    torch.testing.assert_close(neg.tokens, g.conditioner.negative_embedding().tokens.float())
