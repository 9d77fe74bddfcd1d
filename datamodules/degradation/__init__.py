"""Degradation components: HQ batch → (LQ, target) with a plain, loggable parameter record."""
from datamodules.degradation.base import Degradation, DegradationRecord

__all__ = ["Degradation", "DegradationRecord"]
