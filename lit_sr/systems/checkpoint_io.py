"""Checkpoint files that are either complete or absent: write a temporary sibling, then rename.

A save that fails half-way (disk full, killed process) must not leave a truncated
``epoch=…-step=….ckpt`` or ``last.ckpt`` that a resume would pick up: the bytes go to
``.<name>.tmp-<pid>`` in the same folder, are flushed to disk, and replace the target in one
``os.replace``; on any error the temporary file is removed and the old checkpoint stays.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(file_object)`` on a temporary sibling of ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic writes (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))
