"""RCOD's latent domain grouping (LDG): the timestep encodes how degraded the input is.

In training, each image's timestep comes from the latent metric M_L = cos(z_L, z_H), the cosine
similarity of the flattened LQ and HQ latents: badly degraded inputs (low similarity) are trained
at a large t, mild ones at a small t. The UNet thus learns one "domain" per group, and at
inference the user picks the group, i.e. how much the output may depart from the LQ.

Two groupings, one config node:

* ``grouping: formula`` (paper, eq. 5): ``t = k·(n − ⌊n·(M_L − M_min)/(M_max − M_min)⌋)``, with
  the group index g = ⌊…⌋ clamped to [0, n−1], so t ∈ {k, 2k, …, n·k} (250/500/750 for
  k = 250, n = 3). The clamp matters at the edges: M_L ≥ M_max would give g = n and t = 0 (no
  group); it joins the highest-similarity group (t = k). M_L < M_min joins the lowest (t = n·k).
  A metric within 1e-6 of a group edge counts as reaching it, so decimal edges such as 0.7 land
  in the group they name despite floating-point rounding.
* ``grouping: thresholds`` (reference code): ascending edges (0.5, 0.7) and one timestep per
  group, lowest similarity first (749, 499, 249): M_L < 0.5 → 749, 0.5 ≤ M_L < 0.7 → 499,
  M_L ≥ 0.7 → 249.
* ``grouping: quantile``: the formula's timesteps with edges at the 1/n, 2/n, … quantiles of M_L
  over the training data, so every group trains on the same share of samples. Equal-width groups
  follow the data's spread: where M_L bunches up (the tiny CPU default: median 0.95) one group
  gets nearly every sample and the others barely train.

M_min/M_max: the paper takes the min/max of M_L over the training data; ``m_min: auto`` /
``m_max: auto`` do that, and ``grouping: quantile`` derives its edges the same way. The system
runs one pass over up to ``calibration_samples`` training samples (random crops, degraded as in
training, the encoders as at the first step) before the first step, caches the values next to
the file index, and stores the result in checkpoints and exports, so inference and a resumed run
group exactly as training did. Fixed values (M_min = 0.3, M_max = 0.9) put the formula's edges at
the reference code's 0.5 and 0.7 (0.3 + 0.6/3 and 0.3 + 2·0.6/3).

Each epoch the share of training samples per group is logged (``noise/group_t<t>``), with a
warning for a group under 5 %: a group that rarely trains is a knob setting that does not work.

Like the reference code, the denoiser sees the clean LQ latent z_L (no noise is added): the
timestep only tells it which domain it is in. ẑ is the parameterisation's x₀ of its prediction at
z_L: (z_L − √(1−ᾱ_t)·ε̂)/√ᾱ_t for ε-prediction, z_L − σ_t·v̂ for flow matching (the groups'
t = 250/500/750 are σ = 0.50/0.75/0.90 at SD3's shift 3; ``docs/backbones.md``). The reference code
divides by a fixed ᾱ = 0.7537 (≈ ᾱ_200 of the SD schedule) for every t; ``fixed_alpha_x0: 0.7537``
reproduces that (ε-prediction only).

Inference knob: an integer t, a preset (``fidelity`` / ``neutral`` / ``realism`` = the smallest /
middle / largest group timestep: 250/500/750 under the paper grouping), or ``adaptive``: the
metric estimated by a trained MEM (:mod:`lit_sr.model.mem`, ``mem_weights``) picks the group per image.
"""
from __future__ import annotations

import logging
from typing import Annotated, Any

import torch
import torch.nn.functional as F

from lit_sr.model.facts import RunFacts
from lit_sr.model.mem import MetricEstimator, load_mem
from lit_sr.model.noise.base import NoiseContext, NoiseStrategy, parse_timestep
from lit_sr.typed import MustExist

log = logging.getLogger(__name__)
PRESETS = ("fidelity", "neutral", "realism")
GROUPINGS = ("formula", "thresholds", "quantile")
_EDGE_TOL = 1e-6
MIN_GROUP_SHARE = 0.05  # a group with less of an epoch's samples is warned about


def _auto_or_float(value: float | str, key: str) -> float | None:
    """A number, or None for ``auto`` (taken from the training data)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"noise.{key} must be a number or auto, got {value!r}") from None


def latent_cosine(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """M_L: per-sample cosine similarity of flattened latents, (B,) float32."""
    return F.cosine_similarity(z_a.flatten(1).float(), z_b.flatten(1).float(), dim=1)


HQ_ENCODERS = ("adapted", "base")  # which VAE encoder gives z_H (see OneStepSR.encode_hq)


class LDGNoise(NoiseStrategy):
    """Timestep from the LQ/HQ latent similarity group (training) or the user's knob (inference)."""

    needs_hq_latent = True  # M_L compares the LQ latent with the HQ one

    def __init__(
        self,
        grouping: str = "formula",
        n: int = 3,
        k: int = 250,
        m_min: float | str = 0.3,
        m_max: float | str = 0.9,
        thresholds: list[float] | None = None,
        group_timesteps: list[int] | None = None,
        fixed_alpha_x0: float | None = None,
        default_knob: str | int = "neutral",
        mem_weights: Annotated[str, MustExist("file", "MEM file")] | None = None,
        hq_encoder: str = "adapted",
        edges: list[float] | None = None,
        calibration_samples: int = 1024,
    ) -> None:
        super().__init__()
        if hq_encoder not in HQ_ENCODERS:
            raise ValueError(f"noise.hq_encoder must be one of {HQ_ENCODERS}, got {hq_encoder!r}")
        self.hq_encoder = hq_encoder
        if grouping in ("formula", "quantile"):
            if n < 1 or k < 1:
                raise ValueError(f"noise.n and noise.k must be >= 1, got {n}, {k}")
            self.group_t = [int(k) * (int(n) - g) for g in range(int(n))]
            self.edges: list[float] = [float(v) for v in edges] if grouping == "quantile" and edges else []
            if self.edges and (len(self.edges) != int(n) - 1 or self.edges != sorted(self.edges)):
                raise ValueError(f"noise.edges needs n-1 = {int(n) - 1} ascending values, got {self.edges}")
        elif grouping == "thresholds":
            edges = [float(v) for v in (thresholds if thresholds is not None else [0.5, 0.7])]
            ts = [int(v) for v in (group_timesteps if group_timesteps is not None else [749, 499, 249])]
            if len(ts) != len(edges) + 1:
                raise ValueError(f"noise.group_timesteps needs len(thresholds)+1 = {len(edges) + 1} values, got {len(ts)}")
            if edges != sorted(edges):
                raise ValueError(f"noise.thresholds must be ascending, got {edges}")
            self.group_t, self.edges = ts, edges
        else:
            raise ValueError(f"noise.grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
        self.m_min, self.m_max = _auto_or_float(m_min, "m_min"), _auto_or_float(m_max, "m_max")
        if grouping == "formula" and None not in (self.m_min, self.m_max) and not self.m_max > self.m_min:
            raise ValueError(f"need noise.m_max > noise.m_min, got {m_max}, {m_min}")
        if calibration_samples < 1:
            raise ValueError(f"noise.calibration_samples must be >= 1, got {calibration_samples}")
        self.calibration_samples = int(calibration_samples)
        self._counts = torch.zeros(len(self.group_t), dtype=torch.long)
        if fixed_alpha_x0 is not None and not 0 < fixed_alpha_x0 <= 1:
            raise ValueError(f"noise.fixed_alpha_x0 must be in (0, 1], got {fixed_alpha_x0}")
        self.grouping, self.n, self.k = grouping, int(n), int(k)
        self.fixed_alpha_x0 = fixed_alpha_x0
        # Held outside the module tree: the MEM is trained and shipped on its own, so adapter
        # exports and checkpoints do not depend on whether one is used. Moved to the input's device on use.
        self._mem: tuple[MetricEstimator, ...] = ()
        if mem_weights:
            self._mem = (load_mem(mem_weights),)
        self.default_knob = self.parse_knob(default_knob, check_range=False)

    @classmethod
    def requires(cls, node, facts: RunFacts) -> str | None:
        if str(node.get("hq_encoder", "adapted")) not in HQ_ENCODERS:
            return f"noise.hq_encoder must be one of {HQ_ENCODERS}, got {node.get('hq_encoder')!r}"
        weights = node.get("mem_weights")
        if str(node.get("default_knob")).strip().lower() == "adaptive" and not weights:
            return "noise.default_knob=adaptive needs noise.mem_weights (train a MEM with experiment=mem)"
        return None

    # ------------------------------------------------------------------ grouping
    @property
    def mem(self) -> MetricEstimator | None:
        return self._mem[0] if self._mem else None

    def group_index(self, metric: torch.Tensor) -> torch.Tensor:
        """(B,) long group per metric value: 0 = lowest similarity (largest t)."""
        if self.needs_calibration:
            raise RuntimeError("noise=ldg: the groups come from the training data (m_min/m_max: auto or grouping: "
                               "quantile) and were not calibrated; the training system does this before the first step")
        m = metric.detach().double()
        if self.grouping == "formula":
            g = torch.floor(self.n * (m - self.m_min) / (self.m_max - self.m_min) + _EDGE_TOL)
            return g.clamp(0, self.n - 1).long()
        edges = torch.tensor(self.edges, dtype=torch.float64, device=m.device)
        return torch.bucketize(m + _EDGE_TOL, edges, right=True)  # count of edges ≤ m

    # ------------------------------------------------------------------ calibration (m_min/m_max: auto, quantile)
    @property
    def needs_calibration(self) -> bool:
        if self.grouping == "quantile":
            return not self.edges
        return self.grouping == "formula" and (self.m_min is None or self.m_max is None)

    def calibration_metric(self, z_lq: torch.Tensor, z_hq: torch.Tensor) -> torch.Tensor:
        return latent_cosine(z_lq, z_hq)

    def calibrate(self, metrics: torch.Tensor) -> dict[str, Any]:
        """M_min/M_max (``auto``) or the quantile edges from the training data's M_L values."""
        m = metrics.detach().double().flatten().cpu()
        if m.numel() < 2:
            raise ValueError(f"noise=ldg calibration needs at least 2 training samples, got {m.numel()}")
        values: dict[str, Any] = {}
        if self.grouping == "quantile":
            qs = torch.arange(1, self.n, dtype=torch.float64) / self.n
            values["edges"] = [float(v) for v in torch.quantile(m, qs)]
        else:
            lo, hi = float(m.min()), float(m.max())
            if self.m_min is None:
                values["m_min"] = lo
            if self.m_max is None:
                values["m_max"] = hi
            if values.get("m_max", self.m_max) <= values.get("m_min", self.m_min):
                raise ValueError(f"noise=ldg calibration: M_L spans [{lo:.4f}, {hi:.4f}], which leaves no group "
                                 "width (set noise.m_min/m_max)")
        self.apply_calibration(values)
        return values

    def apply_calibration(self, values: dict[str, Any]) -> None:
        if "edges" in values:
            self.edges = [float(v) for v in values["edges"]]
        if "m_min" in values:
            self.m_min = float(values["m_min"])
        if "m_max" in values:
            self.m_max = float(values["m_max"])

    def group_edges(self) -> list[float]:
        """The M_L values where the groups meet, ascending."""
        if self.grouping == "formula":
            return [self.m_min + g * (self.m_max - self.m_min) / self.n for g in range(1, self.n)]
        return list(self.edges)

    def pop_training_counts(self) -> dict[str, int]:
        counts = {f"group_t{t}": int(c) for t, c in zip(self.group_t, self._counts)}
        self._counts.zero_()
        return counts

    def report_training_counts(self, counts: dict[str, int]) -> dict[str, float]:
        total = sum(counts.values())
        if not total:
            return {}
        shares = {name: c / total for name, c in counts.items()}
        rare = [f"t={name.removeprefix('group_t')} ({share:.1%})" for name, share in shares.items()
                if share < MIN_GROUP_SHARE]
        if rare:
            log.warning("noise=ldg: %s of this epoch's %d training samples: under %.0f%%, so the knob settings %s "
                        "barely train (grouping=quantile gives every group the same share)", ", ".join(rare), total,
                        100 * MIN_GROUP_SHARE, "/".join(r.split(" ")[0] for r in rare))
        return shares

    def timestep_for(self, metric: torch.Tensor) -> torch.Tensor:
        """(B,) long timesteps of the groups the metric values fall in."""
        table = torch.tensor(self.group_t, dtype=torch.long, device=metric.device)
        return table[self.group_index(metric).to(metric.device)]

    def preset(self, name: str) -> int:
        ordered = sorted(self.group_t)
        return {"fidelity": ordered[0], "neutral": ordered[(len(ordered) - 1) // 2], "realism": ordered[-1]}[name]

    # ------------------------------------------------------------------ knob
    def parse_knob(self, knob: Any, check_range: bool = True) -> int | str:
        if knob is None:
            return self.default_knob
        if isinstance(knob, str) and knob.strip().lower() in PRESETS:
            return self.preset(knob.strip().lower())
        if isinstance(knob, str) and knob.strip().lower() == "adaptive":
            if check_range and self.mem is None:
                raise ValueError("noise=ldg: knob 'adaptive' needs MEM weights (set noise.mem_weights=/path/mem.safetensors; "
                                 "train one with experiment=mem)")
            return "adaptive"
        try:
            return parse_timestep(knob, self.num_train_timesteps if check_range else 0, "noise=ldg")
        except ValueError:
            t_range = f"[0, {self.num_train_timesteps or 1000})"
            raise ValueError(f"noise=ldg: knob must be an integer timestep in {t_range} (trained groups: "
                             f"{', '.join(str(t) for t in sorted(self.group_t))}) or one of {', '.join(PRESETS)}, "
                             f"adaptive; got {knob!r}") from None

    def knob_values(self) -> list:
        return sorted(self.group_t)

    def knob_help(self) -> str:
        groups = ", ".join(str(t) for t in sorted(self.group_t))
        extra = ", adaptive (the MEM picks the group per image)" if self.mem is not None else ""
        return (f"the degradation group's timestep: one of {groups} (any integer in [0, {self.num_train_timesteps or 1000}) "
                f"runs, but only these were trained) or a preset fidelity, neutral, realism{extra}; default "
                f"{self.default_knob}; larger t = more generated detail")

    def attach(self, parameterisation) -> None:
        super().attach(parameterisation)
        if self.fixed_alpha_x0 is not None and parameterisation.kind != "epsilon":
            raise ValueError(f"noise.fixed_alpha_x0 is the reference code's ε-prediction shortcut; this backbone "
                             f"predicts {parameterisation.kind}: set noise.fixed_alpha_x0=null")
        T = self.num_train_timesteps
        for t in self.group_t:
            if not 0 <= t < T:
                raise ValueError(f"noise=ldg: group timestep {t} outside [0, {T}) (check noise.k/noise.n/noise.group_timesteps)")
        if self.default_knob == "adaptive" and self.mem is None:
            raise ValueError("noise.default_knob=adaptive needs noise.mem_weights")
        if isinstance(self.default_knob, int) and not 0 <= self.default_knob < T:
            raise ValueError(f"noise.default_knob={self.default_knob} outside [0, {T})")

    # ------------------------------------------------------------------ pass
    def estimate_metric(self, ctx: NoiseContext) -> torch.Tensor:
        """MEM's estimate of M_L for the batch (no gradient)."""
        mem = self.mem
        if mem is None:
            raise ValueError("noise=ldg: knob 'adaptive' needs MEM weights (set noise.mem_weights)")
        mem.to(ctx.z_lq.device)
        with torch.no_grad():
            return mem(ctx.z_lq, ctx.lq_up)

    def timesteps(self, ctx: NoiseContext) -> torch.Tensor:
        z = ctx.z_lq
        if ctx.knob is None and ctx.training:
            if ctx.z_hq is None:
                raise ValueError("noise=ldg needs the HQ latent in training (pass hq to the generator step)")
            metric = latent_cosine(z.detach(), ctx.z_hq.detach())
            ctx.extras["latent_metric"] = metric
            groups = self.group_index(metric)
            self._counts += torch.bincount(groups.cpu(), minlength=len(self.group_t))
            table = torch.tensor(self.group_t, dtype=torch.long, device=metric.device)
            return table[groups.to(metric.device)]
        knob = self.parse_knob(ctx.knob)
        if knob == "adaptive":
            metric = self.estimate_metric(ctx)
            ctx.extras["latent_metric"] = metric
            return self.timestep_for(metric)
        return self.full_timesteps(knob, z)

    def denoiser_input(self, ctx: NoiseContext, t: torch.Tensor) -> torch.Tensor:
        return ctx.z_lq

    def to_x0(self, ctx: NoiseContext, t: torch.Tensor, z_in: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        if self.fixed_alpha_x0 is None:
            return self.parameterisation.to_x0(pred, z_in, t)
        a = torch.full((t.shape[0],), float(self.fixed_alpha_x0), device=t.device).to(z_in.dtype)[:, None, None, None]
        return (z_in - (1.0 - a).sqrt() * pred) / a.sqrt()
