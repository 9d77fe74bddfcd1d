"""Analytic FLOPs of one call: torch's operator-level counter (convolutions, matmuls, attention).

Counted per operator from its shapes (``torch.utils.flop_counter``: 2 FLOPs per multiply-add),
so the number is the same on any machine. The input is a fake tensor (shape and dtype, no
data), so a real-size network is counted at a real size in a second, without running it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def count_flops(fn: Callable[[torch.Tensor], Any], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> int:
    """FLOPs of ``fn(x)`` for an input ``x`` of ``shape``, without gradients."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, FakeTensorMode(allow_non_fake_inputs=True):
        fn(torch.empty(shape, dtype=dtype, device=device))
    return int(counter.get_total_flops())
