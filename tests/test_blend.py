"""Image-space γ-blending of IFCSR endpoints: exact endpoints, exact convex combination, two passes."""
from __future__ import annotations

import torch

from lit_sr.blend import blend_many
from lit_sr.build import build_generator


def _perturb(generator) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in generator.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_gammas_reproduce_endpoints_and_cost_two_generator_calls(make_cfg, tiny_bb):
    g = build_generator(make_cfg("experiment=ifcsr"), tiny_bb).eval()
    _perturb(g)
    lq = torch.rand(1, 3, 8, 8)
    calls = []
    hook = g.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
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
