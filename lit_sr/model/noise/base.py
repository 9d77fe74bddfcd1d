"""The noise-strategy interface every one-step scheme implements.

A strategy answers three questions for one generator pass:

1. which timestep ``t`` the pass uses (from the batch in training, from the user's knob at
   inference) — an integer in [0, T) whatever the backbone;
2. what latent the denoiser sees (the clean LQ latent, or a noised one);
3. how the denoiser's prediction turns into the clean-latent estimate ẑ.

Everything that depends on the backbone's parameterisation (ε, v or flow matching: how a
latent is noised at t, how a prediction becomes x₀, the weights a_t, b_t) goes through the
:class:`~lit_sr.model.parameterisation.Parameterisation` the generator attaches, so every
strategy runs on every backbone family. It also reports λ_t (the strength LQ feature
modulation uses) so modulation follows the strategy. The knob is the same idea everywhere:
one number (or named preset) chosen at inference that moves the output between fidelity and
realism.

Values a strategy computes in one pass (the injected noise, a latent metric) go into
``ctx.extras``, the one bag that :meth:`to_x0` reads and the generator returns as
``SROutput.extras``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from lit_sr.model.facts import Checked
from lit_sr.model.parameterisation import Parameterisation


@dataclass
class NoiseContext:
    """What a strategy may look at when it decides ``t`` and the UNet input."""

    lq_up: torch.Tensor  # (B, 3, H, W) upsampled LQ in [-1, 1]
    z_lq: torch.Tensor  # (B, C, h, w) scaled latent of the upsampled LQ
    training: bool
    knob: Any = None  # user's inference setting (None: the strategy's default)
    z_hq: torch.Tensor | None = None  # latent of the HQ target (training, when needs_hq_latent)
    generator: torch.Generator | None = None
    eps: torch.Tensor | None = None  # standard normal noise for strategies that inject some (None: drawn);
    # given by graphs that cannot draw torch's random numbers (the ONNX one-step graph)
    extras: dict = field(default_factory=dict)  # the strategy's values of this pass


def parse_timestep(knob: Any, num_train_timesteps: int, key: str) -> int:
    """An integer timestep from an int or a string of one (CLI), checked against [0, T)."""
    value: int | None = None
    if isinstance(knob, bool):
        value = None
    elif isinstance(knob, int):
        value = knob
    elif isinstance(knob, float) and knob.is_integer():
        value = int(knob)
    elif isinstance(knob, torch.Tensor) and knob.numel() == 1 and not knob.is_floating_point():
        value = int(knob)
    elif isinstance(knob, str) and knob.strip().lstrip("+-").isdigit():
        value = int(knob.strip())
    if value is None:
        raise ValueError(f"{key}: knob must be an integer timestep in [0, {num_train_timesteps or 1000}), got {knob!r}")
    if num_train_timesteps and not 0 <= value < num_train_timesteps:
        raise ValueError(f"{key}: knob t={value} outside the valid range [0, {num_train_timesteps})")
    return value


class NoiseStrategy(Checked, nn.Module, metaclass=abc.ABCMeta):
    """Base class; holds the backbone's parameterisation, attached by the generator.

    Hooks a strategy may set or override (all declared here):

    * ``needs_hq_latent`` — the generator encodes the HQ target into ``ctx.z_hq`` in training;
    * ``hq_encoder`` — which VAE encoder gives that latent (``adapted`` or ``base``);
    * ``has_knob`` — whether :meth:`parse_knob` values change the output (curves need one);
    * :meth:`requires` — combinations with the rest of the run that cannot work;
    * ``needs_calibration`` / :meth:`calibrate` / :meth:`apply_calibration` — settings derived from
      the training data (LDG's ``m_min: auto``): the system runs one pass over training batches
      before the first step, hands the per-sample :meth:`calibration_metric` values over, and
      stores the result in checkpoints and exports;
    * :meth:`pop_training_counts` / :meth:`report_training_counts` — per-epoch counts of what
      training drew (LDG's groups), summed over ranks by the system and turned into logged values.
    """

    needs_hq_latent: ClassVar[bool] = False
    has_knob: ClassVar[bool] = True
    hq_encoder: str = "adapted"

    def __init__(self) -> None:
        super().__init__()
        # A plain attribute, not a submodule: the schedule belongs to the backbone (float64 tables
        # that must not be cast with the module).
        self._parameterisation: Parameterisation | None = None

    def attach(self, parameterisation: Parameterisation) -> None:
        """Bind to the backbone's parameterisation (checks timestep settings against its range)."""
        self._parameterisation = parameterisation

    @property
    def parameterisation(self) -> Parameterisation:
        if self._parameterisation is None:
            raise RuntimeError("noise strategy used before attach(parameterisation)")
        return self._parameterisation

    @property
    def num_train_timesteps(self) -> int:
        return self._parameterisation.num_train_timesteps if self._parameterisation is not None else 0

    def w(self, t: torch.Tensor) -> torch.Tensor:
        """w_t = b_t/a_t, the noise-to-signal ratio at t (the ε → latent scale of a one-step update)."""
        return self.parameterisation.w(t)

    def modulation_strength(self, t: torch.Tensor) -> torch.Tensor:
        """λ_t = 1/w_t: modulation matters more where less noise is injected."""
        return self.parameterisation.modulation_strength(t)

    @abc.abstractmethod
    def timesteps(self, ctx: NoiseContext) -> torch.Tensor:
        """(B,) long timesteps for this pass."""

    @abc.abstractmethod
    def denoiser_input(self, ctx: NoiseContext, t: torch.Tensor) -> torch.Tensor:
        """The latent the denoiser sees; values :meth:`to_x0` needs (e.g. the injected noise) go into ``ctx.extras``."""

    def to_x0(self, ctx: NoiseContext, t: torch.Tensor, z_in: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """ẑ from the denoiser's prediction at input ``z_in`` (the parameterisation's x₀)."""
        return self.parameterisation.to_x0(pred, z_in, t)

    def parse_knob(self, knob: Any) -> Any:
        """Validate a user knob (CLI string or number); raise ValueError with one line naming the valid range."""
        return knob

    def knob_values(self) -> list:
        """Default sweep for fidelity–realism curves."""
        return [None]

    def knob_help(self) -> str:
        """One sentence on what the knob means and its valid range (model cards, ``--help``)."""
        return "no knob"

    # ------------------------------------------------------------------ data-derived settings
    @property
    def needs_calibration(self) -> bool:
        return False

    def calibration_metric(self, z_lq: torch.Tensor, z_hq: torch.Tensor) -> torch.Tensor:
        """(B,) per-sample values :meth:`calibrate` is computed from."""
        raise NotImplementedError(f"{type(self).__name__} needs no calibration")

    def calibrate(self, metrics: torch.Tensor) -> dict[str, Any]:
        """Derive the settings from the training data's metric values; returns them (config keys → values)."""
        raise NotImplementedError(f"{type(self).__name__} needs no calibration")

    def apply_calibration(self, values: dict[str, Any]) -> None:
        """Set what :meth:`calibrate` returned (a resumed run, a loaded export)."""

    def pop_training_counts(self) -> dict[str, int]:
        """Counts accumulated by training passes since the last call (then reset)."""
        return {}

    def report_training_counts(self, counts: dict[str, int]) -> dict[str, float]:
        """Values to log for the (rank-summed) counts of one epoch; may warn."""
        return {}

    @staticmethod
    def full_timesteps(value: int, ref: torch.Tensor) -> torch.Tensor:
        return torch.full((ref.shape[0],), int(value), dtype=torch.long, device=ref.device)
