"""Knob trends: Spearman's ρ against scipy, non-monotone segments, 1-D and knob × γ sweeps."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from lit_sr.metrics.sweep import SweepPoint
from lit_sr.metrics.trend import spearman, sweep_trends, trend_lines


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (3, 5, 12):
        x = rng.integers(0, 4, n).astype(float)  # many ties
        y = rng.normal(size=n)
        expected = spearmanr(x, y).statistic
        got = spearman(list(x), list(y))
        if np.isnan(expected):
            assert got is None
        else:
            assert got == pytest.approx(expected, abs=1e-12)
    assert spearman([1, 2], [2, 1]) == -1.0 and spearman([1], [2]) is None and spearman([1, 2, 3], [5, 5, 5]) is None


def test_knob_trend_names_the_segments_against_the_direction():
    points = [SweepPoint(t) for t in (250, 100, 150, 200)]  # any order: sorted along the knob
    rows = [{"psnr": 28.0, "niqe": 5.0}, {"psnr": 30.0, "niqe": 7.0}, {"psnr": 29.0, "niqe": 6.0},
            {"psnr": 29.5, "niqe": 5.5}]
    trends = {t.metric: t for t in sweep_trends(points, rows, ["psnr", "niqe", "ssim"])}
    assert set(trends) == {"psnr", "niqe"}  # ssim is not in the rows
    assert trends["psnr"].spearman == pytest.approx(-0.8) and trends["psnr"].against == ["150→200"]
    assert trends["niqe"].spearman == pytest.approx(-1.0) and trends["niqe"].against == []
    line, = trend_lines(list(trends.values()), {"psnr": "PSNR↑", "niqe": "NIQE↓"})
    assert line == "Trend along t (Spearman ρ): PSNR↑ -0.80 (non-monotone: 150→200), NIQE↓ -1.00."


def test_knob_by_gamma_grid_gives_one_line_per_row_and_column():
    points = [SweepPoint(k, g) for k in (100, 200, 300) for g in (0.0, 1.0)]
    rows = [{"psnr": 30 - k / 100 - 2 * g} for k in (100, 200, 300) for g in (0.0, 1.0)]
    axes = [t.axis for t in sweep_trends(points, rows, ["psnr"])]
    assert axes == ["t (γ=0)", "t (γ=1)", "γ (t=100)", "γ (t=200)", "γ (t=300)"]
    gamma_only = [SweepPoint(None, g) for g in (0.0, 0.5, 1.0)]
    trend, = sweep_trends(gamma_only, [{"psnr": 30.0}, {"psnr": 29.0}, {"psnr": 29.5}], ["psnr"])
    assert trend.axis == "γ" and trend.against == ["0.5→1"]
    assert sweep_trends([SweepPoint(None)], [{"psnr": 1.0}], ["psnr"]) == []  # nothing varies
