"""Does the control do what it says? Rank correlation of the knob with each metric along a sweep,
and the segments where a metric turns against its overall direction.

A fidelity–realism knob is useful when moving it moves the metrics one way: PSNR down and a
no-reference realism score up as t (or γ) grows, say. :func:`sweep_trends` reports, for each
axis of a sweep that varies (the knob, γ; a knob × γ grid gives one line per row and column),
Spearman's ρ between the setting and every metric, and names each step between neighbouring
settings that goes against the sign of ρ (``250→500``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real

from lit_sr.metrics.sweep import SweepPoint

TIE = 1e-12  # relative change below which neighbouring values count as equal


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); None below 2 points or for a constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / (vx * vy) ** 0.5


@dataclass
class Trend:
    """One metric along one axis of a sweep."""

    axis: str  # "t" or "γ", with the fixed other coordinate: "t (γ=0.5)"
    metric: str
    spearman: float | None
    against: list[str] = field(default_factory=list)  # segments going against the overall direction

    def text(self, display: str | None = None) -> str:
        rho = "n/a" if self.spearman is None else f"{self.spearman:+.2f}"
        extra = f" (non-monotone: {', '.join(self.against)})" if self.against else ""
        return f"{display or self.metric} {rho}{extra}"


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _axes(points: Sequence[SweepPoint]) -> list[tuple[str, list[int]]]:
    """(axis label, point indices ordered along it) for every line of the sweep that varies."""
    knobs = [p.knob for p in points]
    numeric = all(isinstance(k, Real) and not isinstance(k, bool) for k in knobs)
    gammas = {p.gamma for p in points}
    lines: list[tuple[str, list[int]]] = []
    if numeric and len(set(knobs)) > 1:
        for g in sorted(gammas, key=lambda v: -1.0 if v is None else v):
            idx = sorted((i for i, p in enumerate(points) if p.gamma == g), key=lambda i: points[i].knob)
            lines.append(("t" if g is None else f"t (γ={g:g})", idx))
    if len(gammas) > 1 and None not in gammas:
        for k in dict.fromkeys(knobs):
            idx = sorted((i for i, p in enumerate(points) if p.knob == k), key=lambda i: points[i].gamma)
            lines.append(("γ" if len(set(knobs)) == 1 else f"γ (t={_fmt(k)})", idx))
    return lines


def sweep_trends(points: Sequence[SweepPoint], rows: Sequence[dict[str, float]],
                 metrics: Sequence[str]) -> list[Trend]:
    """Trends of ``metrics`` along every varying axis of the sweep (``rows[i]`` scores ``points[i]``)."""
    out: list[Trend] = []
    for axis, idx in _axes(points):
        if len(idx) < 2:
            continue
        position = [points[i].knob if axis.startswith("t") else points[i].gamma for i in idx]
        for name in metrics:
            if not all(name in rows[i] for i in idx):
                continue
            values = [float(rows[i][name]) for i in idx]
            rho = spearman(position, values)
            against = []
            if rho is not None and rho != 0:
                for a, b, va, vb in zip(idx, idx[1:], values, values[1:]):
                    step = vb - va
                    if abs(step) > TIE * max(abs(va), abs(vb), 1e-30) and (step > 0) != (rho > 0):
                        against.append(f"{_setting(points[a], axis)}→{_setting(points[b], axis)}")
            out.append(Trend(axis, name, rho, against))
    return out


def _setting(point: SweepPoint, axis: str) -> str:
    return _fmt(point.knob) if axis.startswith("t") else f"{point.gamma:g}"


def trend_lines(trends: Sequence[Trend], display: dict[str, str] | None = None) -> list[str]:
    """One line per axis: ``Trend along t (Spearman ρ): PSNR↑ -1.00, NIQE↓ +0.50 (non-monotone: 100→150)``."""
    by_axis: dict[str, list[Trend]] = {}
    for trend in trends:
        by_axis.setdefault(trend.axis, []).append(trend)
    display = display or {}
    return [f"Trend along {axis} (Spearman ρ): " + ", ".join(t.text(display.get(t.metric)) for t in items) + "."
            for axis, items in by_axis.items()]
