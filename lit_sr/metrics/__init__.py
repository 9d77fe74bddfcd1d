"""Image-quality metrics for SR evaluation: one metric per file, all torchmetrics ``Metric``\\ s.

Full-reference: PSNR, SSIM (BasicSR protocol: Y channel, border crop), LPIPS, DISTS.
No-reference: NIQE (built in), MUSIQ / MANIQA / CLIPIQA (through pyiqa, when available).
:class:`MetricSuite` builds a named set of them; see ``docs/metrics.md`` for weight files.
"""
from lit_sr.metrics.base import MetricUnavailable, PerImageMetric
from lit_sr.metrics.dists import DISTS, DISTSMetric
from lit_sr.metrics.lpips import LPIPSMetric
from lit_sr.metrics.niqe import NIQE
from lit_sr.metrics.psnr import PSNR
from lit_sr.metrics.pyiqa_metrics import PyiqaMetric
from lit_sr.metrics.ssim import SSIM
from lit_sr.metrics.suite import METRIC_NAMES, MetricSuite, MetricWeights

__all__ = [
    "DISTS",
    "DISTSMetric",
    "LPIPSMetric",
    "METRIC_NAMES",
    "MetricSuite",
    "MetricUnavailable",
    "MetricWeights",
    "NIQE",
    "PSNR",
    "PerImageMetric",
    "PyiqaMetric",
    "SSIM",
]
