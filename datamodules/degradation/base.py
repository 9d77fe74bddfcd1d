"""The degradation interface: sampling parameters is separate from applying them.

``sample`` draws every random choice for a batch from an explicit ``torch.Generator`` into a
:class:`DegradationRecord` (plain tensors and lists, picklable, loggable). ``apply`` is a pure,
deterministic function of (HQ batch, record), so a saved record reproduces the same LQ exactly.
Both work on any device: the HQ batch decides where the arithmetic runs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DegradationRecord:
    """Sampled parameters for one batch; ``params`` maps a name to a per-sample tensor or list."""

    batch_size: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists/floats) for logging and JSON."""
        out: dict[str, Any] = {"batch_size": self.batch_size}
        for key, value in self.params.items():
            out[key] = value.tolist() if isinstance(value, torch.Tensor) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DegradationRecord":
        """Inverse of :meth:`to_dict` (e.g. after ``json.load``): numeric lists become tensors again.

        dtypes are inferred from the values: bools → bool, ints → int64, floats → float32 (the
        dtype ``torch.rand`` samples in, so float32 values round-trip bit-exactly); lists of
        strings stay lists.
        """
        params: dict[str, Any] = {}
        for key, value in data.items():
            if key != "batch_size":
                params[key] = _list_to_tensor(value)
        return cls(batch_size=int(data["batch_size"]), params=params)

    def select(self, index: int) -> "DegradationRecord":
        """The record of one sample (used to compare batched with per-sample application)."""
        picked: dict[str, Any] = {}
        for key, value in self.params.items():
            picked[key] = value[index : index + 1]
        return DegradationRecord(batch_size=1, params=picked)


def _list_to_tensor(value: Any) -> Any:
    """A (nested) list of bools/ints/floats as a tensor; anything else unchanged."""
    if not isinstance(value, list):
        return value
    leaf: Any = value
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    if isinstance(leaf, bool):
        return torch.tensor(value, dtype=torch.bool)
    if isinstance(leaf, int):
        return torch.tensor(value, dtype=torch.int64)
    if isinstance(leaf, float):
        return torch.tensor(value, dtype=torch.float32)
    return value


class Degradation(abc.ABC):
    """HQ (B, 3, H, W) in [0, 1] → LQ (B, 3, H/scale, W/scale) in [0, 1] and the HQ target."""

    def __init__(self, scale: int = 4) -> None:
        if scale < 1:
            raise ValueError(f"degradation scale must be >= 1, got {scale}")
        self.scale = int(scale)

    @abc.abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> DegradationRecord:
        """Draw all random parameters for ``batch_size`` samples (on the generator's device)."""

    @abc.abstractmethod
    def apply(self, hq: torch.Tensor, record: DegradationRecord) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministically degrade ``hq``; returns ``(lq, target)`` (target may be sharpened)."""

    def __call__(
        self, hq: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, DegradationRecord]:
        record = self.sample(hq.shape[0], generator)
        lq, target = self.apply(hq, record)
        return lq, target, record
