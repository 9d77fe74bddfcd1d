"""Hypervolume of a 2-D fidelity–realism curve: one number that rewards the whole trade-off.

Both coordinates are oriented so that larger is better (a lower-is-better metric such as NIQE
or LPIPS is negated). The hypervolume of a point set ``P`` with respect to a reference point
``r`` is the area of the union of the rectangles ``[r_x, p_x] × [r_y, p_y]`` over the points
``p ∈ P`` that are better than ``r`` in both coordinates — the region of the plane that some
point of the curve dominates. A curve that is dominated by another never has a larger
hypervolume, and moving any point outward never decreases it, which makes it a fair score for
checkpoint selection ("the model whose knob sweep covers the most of the plane").
"""
from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]


def to_maximization(points: Sequence[Sequence[float]], higher_is_better: tuple[bool, bool]) -> list[Point]:
    """Negate each coordinate whose metric is lower-is-better, so that larger is better in both."""
    sx = 1.0 if higher_is_better[0] else -1.0
    sy = 1.0 if higher_is_better[1] else -1.0
    return [(sx * float(p[0]), sy * float(p[1])) for p in points]


def _check(points: Sequence[Sequence[float]], reference: Sequence[float]) -> None:
    if len(reference) != 2 or not all(math.isfinite(float(v)) for v in reference):
        raise ValueError(f"reference must be two finite numbers, got {list(reference)}")
    for p in points:
        if len(p) != 2:
            raise ValueError(f"points must be (x, y) pairs, got {list(p)}")


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (maximisation in both coordinates).

    Equal points are all kept. NaN points are never on the front.
    """
    pts = [(float(p[0]), float(p[1])) for p in points]
    front = []
    for i, (x, y) in enumerate(pts):
        if math.isnan(x) or math.isnan(y):
            continue
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(pts) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (both coordinates maximised).

    Points not strictly better than the reference in both coordinates (and NaN points)
    contribute nothing; an empty set has hypervolume 0.
    """
    _check(points, reference)
    rx, ry = float(reference[0]), float(reference[1])
    inside = [(float(x), float(y)) for x, y in points if float(x) > rx and float(y) > ry]
    # Sweep from the largest x down: each point adds the strip between the highest y seen so
    # far and its own y, as wide as its distance to the reference in x.
    area, top = 0.0, ry
    for x, y in sorted(inside, key=lambda p: (-p[0], -p[1])):
        if y > top:
            area += (x - rx) * (y - top)
            top = y
    return area


def curve_hypervolume(
    fidelity: Sequence[float],
    realism: Sequence[float],
    reference: Sequence[float],
    higher_is_better: tuple[bool, bool] = (True, False),
) -> float:
    """Hypervolume of a curve given in the metrics' own units.

    ``fidelity[i]``, ``realism[i]`` are the two metric values of knob setting ``i``;
    ``reference`` is in the same units (e.g. PSNR 20 dB and NIQE 10); ``higher_is_better``
    says each metric's direction (default: PSNR-like fidelity, NIQE-like realism).
    """
    if len(fidelity) != len(realism):
        raise ValueError(f"fidelity and realism lengths differ: {len(fidelity)} vs {len(realism)}")
    points = to_maximization(list(zip(fidelity, realism)), higher_is_better)
    (ref,) = to_maximization([tuple(reference)], higher_is_better)
    return hypervolume_2d(points, ref)
