"""Parameterisations held against diffusers' own schedulers: noising, x₀ and targets for ε, v and flow."""
from __future__ import annotations

import json

import pytest
import torch

from lit_sr.errors import WeightsError
from lit_sr.model.parameterisation import (
    SD_SCHEDULER,
    EpsilonPrediction,
    FlowMatching,
    VPrediction,
    from_scheduler_config,
    read_parameterisation,
)

T = torch.tensor([0, 20, 100, 250, 500, 750, 979, 999])


def _latents(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(T), 4, 6, 6, generator=g, dtype=torch.float64), torch.randn(len(T), 4, 6, 6, generator=g,
                                                                                        dtype=torch.float64)


def _ddpm(kind: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=kind, clip_sample=False)


@pytest.mark.parametrize("kind,cls", [("epsilon", EpsilonPrediction), ("v_prediction", VPrediction)])
def test_ddpm_noising_x0_and_target_match_diffusers(kind, cls):
    param = from_scheduler_config({**SD_SCHEDULER, "prediction_type": kind})
    assert isinstance(param, cls) and param.kind == kind
    sched = _ddpm(kind)
    x0, eps = _latents()
    x_t = param.noised(x0, eps, T)
    torch.testing.assert_close(x_t, sched.add_noise(x0, eps, T), rtol=1e-6, atol=1e-6)
    pred = torch.randn_like(x0)
    for i, t in enumerate(T.tolist()):  # diffusers' own conversion of a prediction into x₀
        ref = sched.step(pred[i:i + 1], t, x_t[i:i + 1]).pred_original_sample
        torch.testing.assert_close(param.to_x0(pred, x_t, T)[i:i + 1], ref, rtol=1e-5, atol=1e-5)
    if kind == "v_prediction":
        torch.testing.assert_close(param.target(x0, eps, T), sched.get_velocity(x0, eps, T), rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(param.target(x0, eps, T), eps)
    torch.testing.assert_close(param.model_timestep(T), T)


def test_flow_matching_sigmas_noising_and_x0_match_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    param = from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                   "shift": 3.0})
    assert isinstance(param, FlowMatching) and param.shift == 3.0
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    # The scheduler's training table runs from σ = 1 (t = 999) down; ours is indexed by t.
    torch.testing.assert_close(param.sigmas.float(), sched.sigmas[:1000].flip(0).float(), rtol=1e-6, atol=1e-7)
    assert float(param.sigma(torch.tensor([999]))) == 1.0
    torch.testing.assert_close(param.model_timestep(T), sched.timesteps.flip(0)[T].float(), rtol=1e-5, atol=1e-3)
    x0, eps = _latents(1)
    x0, eps = x0.float(), eps.float()
    x_t = param.noised(x0, eps, T)
    for i, t in enumerate(T.tolist()):
        ref = sched.scale_noise(x0[i:i + 1], sched.timesteps.flip(0)[T[i:i + 1]], eps[i:i + 1])
        torch.testing.assert_close(x_t[i:i + 1], ref, rtol=1e-5, atol=1e-5)
    pred = torch.randn_like(x0)
    for i, t in enumerate(T.tolist()):  # one Euler step from σ_t to σ = 0 lands on x₀
        u = (t + 1) / 1000
        sched.set_timesteps(sigmas=[u])  # the scheduler shifts the given σ itself
        ref = sched.step(pred[i:i + 1], sched.timesteps[0], x_t[i:i + 1]).prev_sample
        torch.testing.assert_close(param.to_x0(pred, x_t, T)[i:i + 1], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(param.target(x0, eps, T), eps - x0)


@pytest.mark.parametrize("param", [from_scheduler_config(SD_SCHEDULER),
                                   from_scheduler_config({**SD_SCHEDULER, "prediction_type": "v_prediction"}),
                                   FlowMatching(1000, 3.0)], ids=["epsilon", "v", "flow"])
def test_conversions_invert_each_other_and_the_anchored_x0_agrees(param):
    x0, eps = _latents(2)
    t = T[:-1]  # σ = 1 (flow, t = 999) carries no signal: x₀ is not recoverable from ε there
    x0, eps = x0[:-1], eps[:-1]
    x_t = param.noised(x0, eps, t)
    target = param.target(x0, eps, t)
    torch.testing.assert_close(param.to_x0(target, x_t, t), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(param.to_eps(target, x_t, t), eps, rtol=1e-4, atol=1e-4)
    pred = torch.randn_like(x0)
    torch.testing.assert_close(param.to_x0_from(x0, eps, pred, t), param.to_x0(pred, x_t, t), rtol=1e-4, atol=1e-4)
    a, b = param.coefficients(t)
    torch.testing.assert_close(param.w(t), b / a)
    torch.testing.assert_close(param.modulation_strength(t), a / b, rtol=1e-5, atol=0)


def test_anchored_x0_is_exact_where_the_plain_formula_cancels():
    """At σ = 1 a flow prediction equal to its target gives back z_L exactly (RGPA's t = 999)."""
    param = FlowMatching(1000, 3.0)
    z, eps = _latents(3)
    t = torch.full((len(T),), 999)
    assert torch.equal(param.to_x0_from(z.float(), eps.float(), param.target(z.float(), eps.float(), t), t), z.float())


def test_unknown_or_unsupported_schedules_are_refused_with_one_line(tmp_path):
    with pytest.raises(WeightsError, match="prediction_type='sample' is not supported") as exc:
        from_scheduler_config({**SD_SCHEDULER, "prediction_type": "sample"})
    assert "\n" not in str(exc.value)
    with pytest.raises(WeightsError, match="use_dynamic_shifting"):
        from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True})
    folder = tmp_path / "scheduler"
    folder.mkdir()
    (folder / "scheduler_config.json").write_text(json.dumps({**SD_SCHEDULER, "prediction_type": "v_prediction"}))
    assert isinstance(read_parameterisation(tmp_path), VPrediction)
    (folder / "scheduler_config.json").write_text("{broken")
    with pytest.raises(WeightsError, match="cannot read"):
        read_parameterisation(tmp_path)
