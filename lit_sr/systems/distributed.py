"""Small collective helpers for the systems (no-ops in a single process)."""
from __future__ import annotations

from typing import Any

import torch


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """``obj`` from every rank (picklable, any size per rank), in rank order; ``[obj]`` without DDP."""
    if world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
