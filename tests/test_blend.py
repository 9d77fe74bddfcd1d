"""Image-space γ-blending of IFCSR endpoints: exact endpoints, exact convex combination, two passes,
the plain forward of an endpoint model, and what validation shows in each IFCSR stage."""
from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from lit_sr.config.build import build_generator
from lit_sr.config.systems import build_system
from lit_sr.model.blend import blend, blend_many


def _perturb(generator) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in generator.denoiser.net.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_gammas_reproduce_endpoints_and_cost_two_generator_calls(make_cfg, tiny_bb):
    g = build_generator(make_cfg("experiment=ifcsr"), tiny_bb).eval()
    _perturb(g)
    lq = torch.rand(1, 3, 8, 8)
    calls = []
    hook = g.denoiser.net.register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        x_fid, x_real = g.endpoints(lq)
        outs = blend_many(x_fid, x_real, [0.0, 0.3, 1.0, 0.5, 0.9, 0.1])
    hook.remove()
    assert len(calls) == 2  # six blends, two generator passes
    assert (x_fid - x_real).abs().max() > 1e-3  # the endpoints really differ
    assert torch.equal(outs[0], x_fid) and torch.equal(outs[2], x_real)
    assert torch.equal(outs[1], 0.7 * x_fid + 0.3 * x_real)
    torch.testing.assert_close(outs[3], (x_fid + x_real) / 2)
    with torch.no_grad():  # each endpoint is the pass with its own adapters
        torch.testing.assert_close(g.endpoint_step("fidelity", lq).sr, x_fid)
        torch.testing.assert_close(g.endpoint_step("realism", lq).sr, x_real)


def test_plain_forward_of_an_endpoint_model_is_the_blend_at_model_gamma(make_cfg, tiny_bb):
    """Never both endpoint adapters at once: that network was never trained."""
    g = build_generator(make_cfg("experiment=ifcsr", "model.gamma=0.25"), tiny_bb).eval()
    _perturb(g)
    lq = torch.rand(1, 3, 8, 8)
    calls = []
    hook = g.denoiser.net.register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        out = g(lq)
    hook.remove()
    assert len(calls) == 2
    with torch.no_grad():
        x_fid, x_real = g.endpoints(lq)
        both = g.step(lq).sr  # the adapters active after construction: fidelity and realism together
    assert torch.equal(out, blend(x_fid, x_real, 0.25))
    assert (both - out).abs().max() > 1e-3


def test_model_gamma_outside_the_unit_interval_is_rejected(make_cfg, tiny_bb):
    with pytest.raises(ValueError, match="model.gamma"):
        build_generator(make_cfg("experiment=ifcsr", "model.gamma=1.5"), tiny_bb)


def test_validation_shows_the_stage_network_then_the_blend(make_cfg, tiny_bb):
    """IFCSR stage 1 validates the fidelity network it trains; the blend stage validates the blend."""
    cfg = make_cfg("experiment=ifcsr", "val.metrics=[psnr]", "model.gamma=0.5")
    with open_dict(cfg):
        cfg.stages[0].steps = 1
    system = build_system(cfg, backbone=tiny_bb)
    g = system.generator.eval()
    _perturb(g)
    batch = {"lq": torch.rand(1, 3, 8, 8), "hq": torch.rand(1, 3, 32, 32), "name": ["a"]}
    with torch.no_grad():
        system.enter_stage(0)
        first = system.validation_step(batch, 0)["sr"]
        torch.testing.assert_close(first, g.endpoint_step("fidelity", batch["lq"]).sr)
        system.enter_stage(1)
        second = system.validation_step(batch, 0)["sr"]
        torch.testing.assert_close(second, g(batch["lq"]))
        assert (first - second).abs().max() > 1e-4
