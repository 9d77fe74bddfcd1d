"""noise=noised: RGPA's update with a flat weight map (the docs' worked example of a new strategy)."""
from __future__ import annotations

import pytest
import torch

from lit_sr.model.noise.base import NoiseContext
from lit_sr.model.noise.noised import NoisedLatent
from lit_sr.model.noise.rgpa import RGPANoise
from lit_sr.model.parameterisation import SD_SCHEDULER, from_scheduler_config


def _ctx(seed: int) -> NoiseContext:
    g = torch.Generator().manual_seed(0)
    return NoiseContext(lq_up=torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, z_lq=torch.randn(2, 4, 8, 8, generator=g),
                        training=False, knob=200, generator=torch.Generator().manual_seed(seed))


def test_equals_rgpa_with_a_flat_weight_map_and_inverts_exactly():
    abar = from_scheduler_config(SD_SCHEDULER)
    noised, flat = NoisedLatent(), RGPANoise(low=1.0, high=1.0)  # W = 1 everywhere
    noised.attach(abar)
    flat.attach(abar)
    a, b = _ctx(7), _ctx(7)
    t = noised.timesteps(a)
    assert t.tolist() == [200, 200] and torch.equal(t, flat.timesteps(b))
    z_a, z_b = noised.denoiser_input(a, t), flat.denoiser_input(b, t)
    torch.testing.assert_close(z_a, z_b)
    eps_hat = torch.randn_like(z_a)
    torch.testing.assert_close(noised.to_x0(a, t, z_a, eps_hat), flat.to_x0(b, t, z_b, eps_hat))
    assert torch.equal(noised.to_x0(a, t, z_a, a.extras["eps"]), a.z_lq)  # predicting the injected noise → z_L


def test_knob_range_is_named():
    s = NoisedLatent()
    s.attach(from_scheduler_config(SD_SCHEDULER))
    with pytest.raises(ValueError, match=r"valid range \[0, 1000\)"):
        s.parse_knob(1200)
