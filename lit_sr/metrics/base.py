"""The shared shape of every image-quality metric: a DDP-safe mean of per-image scores."""
from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric

from lit_sr.errors import LitSRError

log = logging.getLogger("lit_sr.metrics")
_warned: set[str] = set()


class MetricUnavailable(LitSRError):
    """A metric that cannot give calibrated numbers here (missing weights or backend)."""


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def check_images(sr: torch.Tensor, hq: torch.Tensor | None = None) -> None:
    """One-line errors for inputs that are not (B, 3, H, W) float batches (of equal shape)."""
    if sr.ndim != 4 or sr.shape[1] != 3:
        raise ValueError(f"metrics expect (B, 3, H, W) RGB batches in [0, 1], got shape {tuple(sr.shape)}")
    if not sr.is_floating_point():
        raise ValueError(f"metrics expect float images in [0, 1], got dtype {sr.dtype}")
    if hq is not None and hq.shape != sr.shape:
        raise ValueError(f"SR and HQ shapes differ: {tuple(sr.shape)} vs {tuple(hq.shape)}")


class PerImageMetric(Metric, abc.ABC):
    """Mean over images of a per-image score.

    Sums and counts are the states (``dist_reduce_fx="sum"``), so the value after DDP sync is
    exactly the mean over all images on all ranks. Inputs are RGB in [0, 1] and are clamped to
    that range first, as saving the SR image would do.
    """

    name: ClassVar[str]  # key in result dicts, e.g. "psnr"
    label: ClassVar[str]  # column title without arrow, e.g. "PSNR"
    full_reference: ClassVar[bool]
    higher_is_better: ClassVar[bool]
    is_differentiable = False
    full_state_update = False
    calibrated = True  # False: random network weights (reported as "<name>_uncalibrated")

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def display_name(self) -> str:
        """Table title with the direction arrow: ``PSNR↑``, ``LPIPS↓``."""
        return f"{self.label}{'↑' if self.higher_is_better else '↓'}"

    @abc.abstractmethod
    def per_image(self, sr: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        """Scores of shape ``(B,)`` for one batch (inputs already checked and clamped)."""

    def update(self, sr: torch.Tensor, hq: torch.Tensor | None = None) -> None:
        if self.full_reference and hq is None:
            raise ValueError(f"{self.label} is a full-reference metric: update(sr, hq) needs the HQ batch")
        check_images(sr, hq if self.full_reference else None)
        with torch.no_grad():
            sr = sr.detach().clamp(0, 1)
            hq = hq.detach().clamp(0, 1) if (hq is not None and self.full_reference) else None
            scores = self.per_image(sr, hq)
        self.total += scores.to(torch.float64).sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count


class FrozenNetMetric(PerImageMetric):
    """A metric built around a frozen reference network held in ``self.net``.

    The network's weights come from its own files, so they are kept out of this metric's
    ``state_dict`` (a LightningModule holding the metric does not checkpoint two VGG16s), and
    loading a checkpoint never replaces them.
    """

    net: nn.Module

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_state_dict_post_hook(_drop_net_keys)
        self.register_load_state_dict_pre_hook(_keep_own_net)


def _drop_net_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
        del state_dict[key]


def _keep_own_net(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for key, value in module.net.state_dict().items():
        state_dict[prefix + "net." + key] = value


class FullReferenceMetric(PerImageMetric):
    """A per-image metric comparing SR with HQ after the SR literature's protocol:
    optional BT.601 Y conversion and a border crop (BasicSR's ``crop_border``)."""

    full_reference = True

    def __init__(self, crop_border: int = 4, y_channel: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {crop_border}")
        self.crop_border = int(crop_border)
        self.y_channel = bool(y_channel)

    def prepare(self, sr: torch.Tensor, hq: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """float64, Y or RGB, border-cropped pair."""
        from lit_sr.metrics.color import crop_border, rgb_to_y

        if hq is None:
            raise ValueError(f"{self.name} is a full-reference metric and needs the HQ image")
        sr, hq = sr.to(torch.float64), hq.to(torch.float64)
        if self.y_channel:
            sr, hq = rgb_to_y(sr), rgb_to_y(hq)
        return crop_border(sr, self.crop_border), crop_border(hq, self.crop_border)


def require_weights(label: str, allow_random: bool, **paths: str | None) -> bool:
    """Whether every weight file is given; without them, :class:`MetricUnavailable` naming the missing
    files unless random weights are allowed (then False: the metric is uncalibrated)."""
    missing = [name for name, value in paths.items() if value is None]
    if missing and not allow_random:
        raise MetricUnavailable(f"{label} needs {' and '.join(missing)} (see docs/metrics.md)")
    return not missing
