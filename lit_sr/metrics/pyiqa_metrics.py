"""Learned no-reference metrics (MUSIQ, MANIQA, CLIPIQA) through the optional ``pyiqa`` package.

pyiqa needs torchvision, which cannot be installed next to lightning on the CPU machines this
project targets, and its checkpoints cannot be downloaded there; so these metrics exist only
where pyiqa imports *and* a local directory with its checkpoint files is given. Anywhere else
they raise :class:`MetricUnavailable` with the reason, and :class:`MetricSuite` leaves them out.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from lit_sr.metrics.base import FrozenNetMetric, MetricUnavailable

# Our name → (pyiqa metric name, table label). All three are higher-is-better.
PYIQA_METRICS: dict[str, tuple[str, str]] = {
    "musiq": ("musiq", "MUSIQ"),
    "maniqa": ("maniqa", "MANIQA"),
    "clipiqa": ("clipiqa", "CLIPIQA"),
}


def _import_pyiqa() -> Any:
    try:
        return importlib.import_module("pyiqa")
    except Exception as exc:  # ImportError, or torchvision failing inside it
        raise MetricUnavailable(f"pyiqa is not importable ({type(exc).__name__}: {exc})") from None


class PyiqaMetric(FrozenNetMetric):
    """A pyiqa no-reference metric, scored per image and averaged.

    Args:
        metric: ``"musiq"``, ``"maniqa"`` or ``"clipiqa"``.
        weights_dir: directory holding the checkpoint files pyiqa would otherwise download to its
            cache (``<torch hub dir>/pyiqa``); pyiqa is pointed there and must not need the network.
        pyiqa_name: override of the pyiqa metric name (e.g. ``"maniqa-koniq"``, ``"clipiqa+"``).
    """

    full_reference = False
    higher_is_better = True

    def __init__(
        self, metric: str, weights_dir: str | None = None, pyiqa_name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if metric not in PYIQA_METRICS:
            raise ValueError(f"unknown pyiqa metric {metric!r}; choose from {sorted(PYIQA_METRICS)}")
        default_name, self.label = PYIQA_METRICS[metric]
        self.name = metric
        if weights_dir is None:
            raise MetricUnavailable(f"{self.label} needs a local pyiqa weights directory (pyiqa_weights_dir)")
        if not os.path.isdir(weights_dir):
            raise MetricUnavailable(f"{self.label}: pyiqa weights directory not found: {weights_dir}")
        pyiqa = _import_pyiqa()  # only now: importing it pulls in torchvision
        # pyiqa resolves checkpoint files under this module-level directory before downloading.
        download_util = importlib.import_module("pyiqa.utils.download_util")
        download_util.DEFAULT_CACHE_DIR = os.path.abspath(weights_dir)
        try:
            self.net = pyiqa.create_metric(pyiqa_name or default_name, as_loss=False, device="cpu")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise MetricUnavailable(f"{self.label}: pyiqa could not build it from {weights_dir} ({reason})") from None
        self.net.requires_grad_(False)
        self.net.eval()

    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        # pyiqa's wrapper moves inputs to its recorded device; keep that in step with ours.
        if hasattr(self.net, "device"):
            self.net.device = sr.device
        return self.net(sr).reshape(sr.shape[0]).to(torch.float64)
