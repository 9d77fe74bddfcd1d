"""A set of image-quality metrics chosen by name, updated and computed together."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lit_sr.metrics.base import MetricUnavailable, PerImageMetric, warn_once
from lit_sr.metrics.colour_shift import ColourShift
from lit_sr.metrics.dists import DISTSMetric
from lit_sr.metrics.lpips import LPIPSMetric
from lit_sr.metrics.niqe import NIQE
from lit_sr.metrics.psnr import PSNR
from lit_sr.metrics.pyiqa_metrics import PyiqaMetric
from lit_sr.metrics.ssim import SSIM

METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "colour", "lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa")


@dataclass
class MetricWeights:
    """Local weight files of the network-based metrics (see docs/metrics.md); one object for every caller."""

    vgg: str | None = None  # torchvision ImageNet VGG16 (vgg16-397923af.pth): LPIPS and DISTS
    lpips: str | None = None  # lpips' v0.1 linear heads (vgg.pth)
    dists: str | None = None  # DISTS' alpha/beta (weights.pt)
    pyiqa_dir: str | None = None  # local pyiqa checkpoints: MUSIQ, MANIQA, CLIPIQA
    allow_random: bool = False  # let LPIPS/DISTS score with seeded random weights (uncalibrated)


@dataclass(frozen=True)
class _Options:
    crop_border: int
    y_channel: bool
    niqe_crop_border: int
    niqe_luma: str
    weights: MetricWeights


_BUILDERS: dict[str, Callable[[_Options], PerImageMetric]] = {
    "psnr": lambda o: PSNR(crop_border=o.crop_border, y_channel=o.y_channel),
    "ssim": lambda o: SSIM(crop_border=o.crop_border, y_channel=o.y_channel),
    "colour": lambda o: ColourShift(crop_border=o.crop_border),
    "lpips": lambda o: LPIPSMetric(o.weights.vgg, o.weights.lpips, allow_random=o.weights.allow_random),
    "dists": lambda o: DISTSMetric(o.weights.vgg, o.weights.dists, allow_random=o.weights.allow_random),
    "niqe": lambda o: NIQE(crop_border=o.niqe_crop_border, luma=o.niqe_luma),  # type: ignore[arg-type]
    "musiq": lambda o: PyiqaMetric("musiq", o.weights.pyiqa_dir),
    "maniqa": lambda o: PyiqaMetric("maniqa", o.weights.pyiqa_dir),
    "clipiqa": lambda o: PyiqaMetric("clipiqa", o.weights.pyiqa_dir),
}


class MetricSuite(nn.Module):
    """Full-reference and no-reference metrics over a dataset, DDP-safe.

    Metrics that cannot give calibrated numbers here (weights or backend missing) are reported
    once as a logged warning, listed in :attr:`unavailable`, and left out of :meth:`compute` —
    never replaced by numbers from random weights unless ``allow_random_weights=True``.
    Each metric is a torchmetrics ``Metric``, so the suite moves with ``.to(device)`` and
    :meth:`compute` returns the mean over all images on all ranks.

    Args:
        names: metrics to build, from :data:`METRIC_NAMES`.
        scale: SR factor; the default border crop of PSNR/SSIM (``crop_border=None``).
        crop_border: pixels dropped on each side for PSNR/SSIM.
        y_channel: PSNR/SSIM on BT.601 Y (True, the literature's default) or on RGB.
        niqe_crop_border: border crop for NIQE (0: the whole image, as pyiqa).
        niqe_luma: ``"ycbcr"`` (BasicSR) or ``"yiq"`` (pyiqa's default) luminance for NIQE.
        weights: local weight files of the network metrics (:class:`MetricWeights`).
    """

    def __init__(
        self,
        names: Sequence[str] = ("psnr", "ssim", "lpips", "dists", "niqe"),
        *,
        scale: int = 4,
        crop_border: int | None = None,
        y_channel: bool = True,
        niqe_crop_border: int = 0,
        niqe_luma: str = "ycbcr",
        weights: MetricWeights | None = None,
    ) -> None:
        super().__init__()
        unknown = [n for n in names if n not in _BUILDERS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {list(names)}")
        opts = _Options(crop_border=scale if crop_border is None else crop_border, y_channel=y_channel,
                        niqe_crop_border=niqe_crop_border, niqe_luma=niqe_luma, weights=weights or MetricWeights())
        self.metrics = nn.ModuleDict()
        self.unavailable: dict[str, str] = {}
        for name in names:
            try:
                self.metrics[name] = _BUILDERS[name](opts)
            except MetricUnavailable as exc:
                self.unavailable[name] = str(exc)
                warn_once(f"metric {name} unavailable: {exc}")

    @property
    def names(self) -> list[str]:
        """The metrics that will report numbers, in the order requested."""
        return list(self.metrics.keys())

    @property
    def display_names(self) -> dict[str, str]:
        """``{"psnr": "PSNR↑", "lpips": "LPIPS↓", ...}`` for table headers."""
        return {n: m.display_name for n, m in self.metrics.items()}

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {n: bool(m.higher_is_better) for n, m in self.metrics.items()}

    def update(self, sr: torch.Tensor, hq: torch.Tensor | None = None) -> None:
        """Add a batch. Without ``hq`` only the no-reference metrics are updated."""
        for metric in self.metrics.values():
            if metric.full_reference and hq is None:
                continue
            metric.update(sr, hq if metric.full_reference else None)

    def compute(self) -> dict[str, float]:
        """Dataset means of every metric that has seen images (synchronised across ranks).

        A metric that saw no image (e.g. full-reference metrics of an HQ-less set) is left out; a
        metric whose images scored NaN (a diverged model) reports NaN — never silently dropped.
        """
        out: dict[str, float] = {}
        for name, metric in self.metrics.items():
            # Every rank computes every metric (the sync is collective); torchmetrics' "compute
            # before update" warning is about the no-image case handled here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*called before the ``update`` method.*")
                value = float(metric.compute())
                with metric.sync_context():
                    seen = int(metric.count)
            if seen > 0:
                out[self.report_name(name)] = value
        return out

    def report_name(self, name: str) -> str:
        """The key a metric's value is reported under: ``lpips``, or ``lpips_uncalibrated`` on random weights."""
        return name if self.metrics[name].calibrated else f"{name}_uncalibrated"

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
