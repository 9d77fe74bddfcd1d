"""VSD's fake-score update with gradient checkpointing: the same gradients as without it.

With ``model.gradient_checkpointing`` the UNet blocks of the fake-score pass are recomputed in
backward. The recomputation must run with the fake adapter active, as the forward did, and not
with the generator's adapters that ``AdapterSet.using`` has restored by then.
"""
from __future__ import annotations

import copy

import torch

from lit_sr.config.systems import build_system
from lit_sr.model.adapters import only_trainable
from lit_sr.model.output import SROutput


def _system(make_cfg, backbone, ckpt: bool):
    cfg = make_cfg("loss=osediff_vsd", "loss.terms.lpips=null", "val.metrics=[psnr]",
                   f"model.gradient_checkpointing={str(ckpt).lower()}")
    return build_system(cfg, backbone=backbone)


def _fake_score_grads(system, out, seed: int) -> dict[str, torch.Tensor]:
    vsd = system.losses["vsd"]
    own = vsd.own_parameters()
    for p in own:
        p.grad = None
    with only_trainable(system, own):  # the system's aux phase
        vsd.aux_loss(out, {"rng": torch.Generator().manual_seed(seed)}).backward()
    return {n: p.grad.clone() for n, p in system.generator.denoiser.net.named_parameters()
            if ".vsd_fake." in n and p.grad is not None}


def test_fake_score_gradients_equal_with_and_without_checkpointing(make_cfg, tiny_bb):
    plain = _system(make_cfg, copy.deepcopy(tiny_bb), ckpt=False)
    ckpt = _system(make_cfg, tiny_bb, ckpt=True)
    assert ckpt.generator.denoiser.net.is_gradient_checkpointing and not plain.generator.denoiser.net.is_gradient_checkpointing
    # Generator and fake adapters that differ from each other (and from zero-initialised B):
    # a recomputation with the wrong adapter active then gives different gradients.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in plain.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ckpt.load_state_dict(plain.state_dict())
    for system in (plain, ckpt):
        system.train()
    gen = plain.generator
    rng = torch.Generator().manual_seed(1)
    b = 2
    z = torch.randn(b, 4, 8, 8, generator=rng)
    cond = gen.conditioner(torch.zeros(b, 3, 32, 32)).detach()
    out = SROutput(sr=torch.rand(b, 3, 32, 32), z_hat=z, z_lq=z, t=torch.full((b,), 999), pred=z, cond=cond,
                   lq_up=torch.rand(b, 3, 32, 32), z_in=z)
    ref = _fake_score_grads(plain, out, seed=2)
    got = _fake_score_grads(ckpt, out, seed=2)
    assert ref and set(got) == set(ref)
    assert any(v.abs().sum() > 0 for v in ref.values())
    for name, grad in ref.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=f"{name}")
    # Only the fake adapter received gradients, and the generator's adapters are active again.
    assert all(p.grad is None for n, p in ckpt.named_parameters() if ".vsd_fake." not in n)
    assert ckpt.generator.adapters.active["denoiser"] == ["main"]
