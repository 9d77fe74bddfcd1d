"""Knob sweeps: every SR image of one LQ batch over a knob × γ grid, and per-setting score sums.

Shared by the evaluation CLI (:mod:`lit_sr.evaluate`) and the fidelity–realism curve callback
(``callbacks/fr_curve.py``): one definition of what a sweep is and how its scores are averaged.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lit_sr.errors import ConfigError, LitSRError
from lit_sr.metrics.base import check_images
from lit_sr.metrics.suite import MetricSuite
from lit_sr.model.blend import blend_many

# γ values swept for models with fidelity/realism endpoints when none are given.
DEFAULT_GAMMAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SweepPoint:
    """One setting of the sweep: a parsed knob (None: the strategy's default) and an optional γ."""

    knob: Any
    gamma: float | None = None

    @property
    def knob_text(self) -> str:
        return "default" if self.knob is None else str(self.knob)

    @property
    def label(self) -> str:
        """ASCII name for metric keys and files: ``250``, ``g0.5``, ``250_g0.5``, ``default``."""
        parts = [] if self.knob is None else [str(self.knob)]
        if self.gamma is not None:
            parts.append(f"g{self.gamma:g}")
        return "_".join(parts) or "default"


@dataclass
class KnobSweep:
    """The knob × γ grid of one generator; :meth:`run` makes every SR image of one LQ batch.

    With γ values, the two endpoint images are computed once per knob and blended for every γ
    (no further network calls); without, each knob costs one generator pass.
    """

    knobs: list[Any]
    gammas: list[float] | None = None

    @classmethod
    def for_generator(cls, generator: Any, knobs: Sequence[Any] | str | None = None,
                      gammas: Sequence[float] | None = None) -> KnobSweep:
        """Parse ``knobs`` through the noise strategy (None or ``"sweep"``: its default sweep).

        ``gammas=None`` sweeps :data:`DEFAULT_GAMMAS` on endpoint models and nothing otherwise.
        Bad values raise :class:`ConfigError` with one line.
        """
        if knobs is None or knobs == "sweep":
            raw = list(generator.noise.knob_values())
        elif isinstance(knobs, str):
            raise ConfigError(f"knobs must be a list of knob values or 'sweep', got {knobs!r}")
        else:
            raw = list(knobs)
        if not raw:
            raise ConfigError("the knob list is empty")
        parsed: list[Any] = []
        for value in raw:
            try:
                knob = generator.noise.parse_knob(value)
            except ValueError as exc:
                raise ConfigError(f"bad knob {value!r}: {str(exc).splitlines()[0]}") from None
            if knob not in parsed:  # e.g. noise=uniform maps every knob to None
                parsed.append(knob)
        if gammas is not None and not generator.has_endpoints:
            raise ConfigError("gammas need a model with fidelity/realism endpoints (model.endpoints)")
        if gammas is None and generator.has_endpoints:
            gammas = list(DEFAULT_GAMMAS)
        if gammas is not None:
            gammas = [float(g) for g in gammas]
            bad = [g for g in gammas if not 0.0 <= g <= 1.0]
            if bad or not gammas:
                raise ConfigError(f"gammas must be a non-empty list of values in [0, 1], got {gammas}")
        return cls(parsed, gammas)

    @property
    def points(self) -> list[SweepPoint]:
        gammas: list[float | None] = list(self.gammas) if self.gammas is not None else [None]
        return [SweepPoint(k, g) for k in self.knobs for g in gammas]

    def run(self, generator: Any, lq: torch.Tensor, batch: dict | None = None) -> list[torch.Tensor]:
        """SR images of ``lq`` for every point, in :attr:`points` order (``batch``: per-image prompts/names)."""
        outputs: list[torch.Tensor] = []
        for knob in self.knobs:
            if self.gammas is not None:
                x_fid, x_real = generator.endpoints(lq, knob, batch)
                outputs.extend(blend_many(x_fid, x_real, self.gammas))
            else:
                outputs.append(generator(lq, knob, batch))
        return outputs

    def run_knob(self, generator: Any, lq: torch.Tensor, knob: Any,
                 batch: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The SR images of one knob (one per γ, or one) — what :meth:`run` gives for it, through the
        generator's ``step`` / ``endpoint_step`` — and the (B,) timesteps the passes ran at
        (``adaptive`` picks one per image)."""
        if self.gammas is not None:
            fid = generator.endpoint_step("fidelity", lq, knob, batch=batch)
            real = generator.endpoint_step("realism", lq, knob, batch=batch)
            return blend_many(fid.sr, real.sr, self.gammas), fid.t
        out = generator.step(lq, knob=knob, batch=batch)
        return [out.sr], out.t


class SweepScores:
    """Per-point sums of per-image scores of every metric in a suite.

    Points are scored image by image, so one suite (one copy of each metric network) serves
    any number of sweep points. Sums and counts are plain tensors; under DDP pass a summing
    reduction to :meth:`means` to get the mean over the images of all ranks.
    """

    def __init__(self, suite: MetricSuite, num_points: int) -> None:
        self.suite = suite
        self.names = suite.names
        self.totals = torch.zeros(num_points, len(self.names), 2, dtype=torch.float64)
        self.records: list[tuple[int, str, str, float]] = []  # (point, image, metric, score) of this process

    def add(self, index: int, sr: torch.Tensor, hq: torch.Tensor | None, name: str = "") -> None:
        """Score one batch of SR images (``hq`` None: no-reference metrics only)."""
        sr = sr.detach().float().clamp(0, 1)
        hq = hq.detach().float().clamp(0, 1) if hq is not None else None
        for j, metric_name in enumerate(self.names):
            metric = self.suite.metrics[metric_name]
            if metric.full_reference and hq is None:
                continue
            ref = hq if metric.full_reference else None
            try:
                check_images(sr, ref)
                with torch.no_grad():
                    scores = metric.per_image(sr, ref).detach().to("cpu", torch.float64)
            except ValueError as exc:  # e.g. NIQE on an image smaller than two 96x96 patches
                raise LitSRError(f"{metric.label} cannot score {name or 'an image'}: {str(exc).splitlines()[0]} "
                                 f"(leave {metric.label} out or use larger images)") from None
            self.totals[index, j, 0] += scores.sum()
            self.totals[index, j, 1] += scores.numel()
            self.records += [(index, name if scores.numel() == 1 else f"{name}[{k}]", metric_name, float(v))
                             for k, v in enumerate(scores.tolist())]

    def means(self, reduce: Any = None) -> list[dict[str, float]]:
        """Mean of each metric per point; metrics that saw no image are left out.

        ``reduce``: a function summing a tensor over processes (e.g. ``trainer.strategy.reduce``
        with ``reduce_op="sum"``), or None on a single process.
        """
        totals = self.totals if reduce is None else reduce(self.totals).to("cpu", torch.float64)
        rows = []
        for i in range(totals.shape[0]):
            row = {}
            for j, name in enumerate(self.names):
                total, count = float(totals[i, j, 0]), float(totals[i, j, 1])
                if count > 0:
                    row[name] = total / count
            rows.append(row)
        return rows


def seed_for(seed: int, *parts: Any) -> int:
    """A seed derived from ``seed`` and ``parts`` (an image name, a setting): the noise of one
    (image, setting) pair does not depend on which images or settings ran before it."""
    digest = hashlib.sha256("\0".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """The same noise for every evaluation (strategies may draw noise at inference), without
    disturbing the caller's RNG streams."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield
