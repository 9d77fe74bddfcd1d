"""What a backbone's network predicts and how its noisy inputs are made: ε, v or flow matching.

Every diffusion backbone is trained on inputs ``x_t = a_t·x₀ + b_t·ε`` and predicts one linear
combination of x₀ and ε. The scheduler config in the backbone folder says which
(``prediction_type``, or the scheduler class for flow matching); :func:`from_scheduler_config`
reads it, and nothing else in the project needs to know:

=================  ====================  ===============  ====================  ============
kind               a_t                   b_t              prediction            told time
=================  ====================  ===============  ====================  ============
``epsilon``        √ᾱ_t                  √(1−ᾱ_t)         ε                     t
``v_prediction``   √ᾱ_t                  √(1−ᾱ_t)         v = a·ε − b·x₀        t
``flow``           1 − σ_t               σ_t              v = ε − x₀            1000·σ_t
=================  ====================  ===============  ====================  ============

ᾱ_t is the DDPM schedule of the scheduler config; for flow matching σ_t = s·u/(1 + (s−1)·u) with
u = (t + 1)/T and the scheduler's ``shift`` s (diffusers' ``FlowMatchEulerDiscreteScheduler``
table, read from t = T−1 at σ = 1 down to t = 0). The timestep ``t`` is an integer in [0, T)
everywhere in the project (knobs, training ranges, VSD's range); only the network is told
:meth:`Parameterisation.model_timestep`.

Method parts use the pieces below, never ᾱ or σ directly:

* :meth:`noised` — the network's training input (RGPA's and VSD's noising);
* :meth:`to_x0` / :meth:`to_eps` — a prediction turned into x₀ / ε;
* :meth:`target` — what the network should predict for (x₀, ε) (VSD's fake-score loss);
* :meth:`x0_slope` — c_t = −∂x̂₀/∂prediction, so that ``x̂₀ = x₀ + c_t·(target(x₀, ε) − prediction)``
  for an input noised from a known x₀ (RGPA): the same value as :meth:`to_x0` without subtracting
  two large terms;
* :meth:`w` — b_t/a_t, the noise-to-signal ratio (LQFM's λ_t = 1/w_t).
"""
from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from lit_sr.errors import WeightsError

PREDICTION_TYPES = ("epsilon", "v_prediction")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) coefficients as (B, 1, 1, 1) in ``like``'s dtype, broadcastable to a latent."""
    return v.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class Parameterisation(abc.ABC):
    """The noising and prediction conventions of one backbone (see the module docstring)."""

    kind: ClassVar[str]

    def __init__(self, num_train_timesteps: int = 1000) -> None:
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = int(num_train_timesteps)

    # ------------------------------------------------------------------ schedule
    @abc.abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, b_t) as float32 (B,) tensors on t's device: ``x_t = a_t·x₀ + b_t·ε``."""

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the network is told for integer timesteps ``t``."""
        return t

    def w(self, t: torch.Tensor) -> torch.Tensor:
        """w_t = b_t/a_t (float32, (B,)): how much noise the input carries per unit of signal."""
        a, b = self.coefficients(t)
        return b / a

    def modulation_strength(self, t: torch.Tensor) -> torch.Tensor:
        """λ_t = 1/w_t = a_t/b_t: LQ modulation counts more where less noise is injected (0 at pure noise)."""
        a, b = self.coefficients(t)
        return a / b

    # ------------------------------------------------------------------ conversions
    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = a_t·x₀ + b_t·ε."""
        a, b = self.coefficients(t)
        return _col(a, x0) * x0 + _col(b, x0) * eps

    @abc.abstractmethod
    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should predict for an input noised from ``x0`` with ``eps`` at ``t``."""

    @abc.abstractmethod
    def to_x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂₀ from a prediction at input ``x_t``."""

    @abc.abstractmethod
    def to_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ from a prediction at input ``x_t``."""

    @abc.abstractmethod
    def x0_slope(self, t: torch.Tensor) -> torch.Tensor:
        """c_t (float32, (B,)) with x̂₀ = x₀ + c_t·(target(x₀, ε, t) − prediction) for x_t = noised(x₀, ε, t)."""

    def to_x0_from(self, x0: torch.Tensor, eps: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:meth:`to_x0` of ``noised(x0, eps, t)``, written around the known x₀ (no cancellation)."""
        return x0 + _col(self.x0_slope(t), pred) * (self.target(x0, eps, t).to(pred.dtype) - pred)

    def describe(self) -> str:
        return self.kind

    def state(self) -> dict[str, Any]:
        """The values that define this parameterisation (export manifests, model cards)."""
        return {"kind": self.kind, "num_train_timesteps": self.num_train_timesteps}


class _DDPM(Parameterisation, abc.ABC):
    """A DDPM schedule ᾱ_t (held in float64 on the CPU: ᾱ_999 ≈ 0.005 must not round in bf16)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__(int(alphas_cumprod.numel()))
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64).clone()

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t, float32 (B,) on t's device."""
        return self.alphas_cumprod.to(t.device)[t.long()].float()

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alpha_bar(t)
        return a.sqrt(), (1.0 - a).sqrt()

    def w(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar(t)
        return (1.0 - a).sqrt() / a.sqrt()

    def modulation_strength(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / self.w(t)


class EpsilonPrediction(_DDPM):
    """DDPM ε-prediction (SD-2.1-base, SD-Turbo): x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ."""

    kind = "epsilon"

    def target(self, x0, eps, t):
        return eps

    def to_x0(self, pred, x_t, t):
        a = _col(self.alpha_bar(t), x_t)
        return (x_t - (1.0 - a).sqrt() * pred) / a.sqrt()

    def to_eps(self, pred, x_t, t):
        return pred

    def x0_slope(self, t):
        return self.w(t)


class VPrediction(_DDPM):
    """DDPM v-prediction (SD-2.1 768-v): v = √ᾱ·ε − √(1−ᾱ)·x₀, x̂₀ = √ᾱ·x_t − √(1−ᾱ)·v̂."""

    kind = "v_prediction"

    def target(self, x0, eps, t):
        a, b = self.coefficients(t)
        return _col(a, x0) * eps - _col(b, x0) * x0

    def to_x0(self, pred, x_t, t):
        a, b = self.coefficients(t)
        return _col(a, x_t) * x_t - _col(b, x_t) * pred

    def to_eps(self, pred, x_t, t):
        a, b = self.coefficients(t)
        return _col(b, x_t) * x_t + _col(a, x_t) * pred

    def x0_slope(self, t):
        return self.coefficients(t)[1]


class FlowMatching(Parameterisation):
    """Rectified flow (SD3, SD3.5): x_t = (1−σ)·x₀ + σ·ε, the network predicts v = ε − x₀ and is told 1000·σ."""

    kind = "flow"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        super().__init__(num_train_timesteps)
        if not shift > 0:
            raise ValueError(f"flow-matching shift must be > 0, got {shift}")
        self.shift = float(shift)
        u = torch.arange(1, self.num_train_timesteps + 1, dtype=torch.float64) / self.num_train_timesteps
        self.sigmas = self.shift * u / (1 + (self.shift - 1) * u)  # σ for t = 0 … T−1 (σ = 1 at T−1)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ_t, float32 (B,) on t's device."""
        return self.sigmas.to(t.device)[t.long()].float()

    def coefficients(self, t):
        s = self.sigma(t)
        return 1.0 - s, s

    def model_timestep(self, t):
        return self.sigma(t) * self.num_train_timesteps

    def target(self, x0, eps, t):
        return eps - x0

    def to_x0(self, pred, x_t, t):
        return x_t - _col(self.sigma(t), x_t) * pred

    def to_eps(self, pred, x_t, t):
        return x_t + _col(1.0 - self.sigma(t), x_t) * pred

    def x0_slope(self, t):
        return self.sigma(t)

    def describe(self) -> str:
        return f"flow (shift {self.shift:g})"

    def state(self) -> dict[str, Any]:
        return {**super().state(), "shift": self.shift}


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                        beta_schedule: str = "scaled_linear") -> torch.Tensor:
    """ᾱ_t of a DDPM schedule, computed as diffusers' ``DDPMScheduler`` does (float64 here)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                          beta_schedule=beta_schedule)
    return sched.alphas_cumprod.to(torch.float64)


# SD-2.1's training schedule: scaled-linear betas over 1000 steps, ε-prediction.
SD_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}


def from_scheduler_config(config: dict, where: str = "scheduler config") -> Parameterisation:
    """The parameterisation a diffusers scheduler config describes; one line naming the key otherwise."""
    cls = str(config.get("_class_name", ""))
    steps = int(config.get("num_train_timesteps", 1000))
    if cls in FLOW_SCHEDULERS:
        if config.get("use_dynamic_shifting"):
            raise WeightsError(f"{where}: use_dynamic_shifting=true (resolution-dependent shift, FLUX-style) is not "
                               "supported; only a fixed shift")
        return FlowMatching(steps, float(config.get("shift", 1.0)))
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise WeightsError(f"{where}: prediction_type={kind!r} is not supported (epsilon, v_prediction, or a "
                           f"{' / '.join(FLOW_SCHEDULERS)} for flow matching)")
    if config.get("trained_betas") is not None:
        raise WeightsError(f"{where}: trained_betas (an explicit beta table) is not supported")
    alphas = ddpm_alphas_cumprod(steps, float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012)),
                                 str(config.get("beta_schedule", "scaled_linear")))
    return EpsilonPrediction(alphas) if kind == "epsilon" else VPrediction(alphas)


def read_parameterisation(path: str | Path | None) -> Parameterisation:
    """The parameterisation of a diffusers folder (``scheduler/scheduler_config.json``), read cheaply
    (nothing else is loaded); SD-2.1's ε schedule without a path."""
    if path in (None, "", "???"):
        return from_scheduler_config(SD_SCHEDULER)
    file = Path(path).expanduser() / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        raise WeightsError(f"backbone.path: scheduler config not found: {file}")
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"backbone.path: cannot read {file}: {exc}") from None
    return from_scheduler_config(config, str(file))
