"""Checkpoint files that are either complete or absent: write a temporary sibling, then rename.

A save that fails half-way (disk full, killed process) must not leave a truncated
``epoch=…-step=….ckpt`` or ``last.ckpt`` that a resume would pick up: the bytes go to
``.<name>.tmp-<pid>`` in the same folder, are flushed to disk, and replace the target in one
``os.replace``; on any error the temporary file is removed and the old checkpoint stays. A write
that fails (disk full) ends the run with one line (:class:`CheckpointWriteError`).

A process killed outright (SIGKILL, power loss) cannot clean up: :func:`remove_orphans` removes
the temporary files and folders (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) of processes that
are gone, and the next run calls it on its checkpoint and export folders.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_sr.errors import LitSRError

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$")


class CheckpointWriteError(LitSRError, OSError):
    """A checkpoint could not be written (disk full, no permission); the previous file is intact."""


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove the temporary files/folders in ``folder`` whose writing process is gone; returns them.

    Those of live processes (another run sharing the folder, ``run_lock=false``) are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d leftover temporary file(s) of an interrupted run in %s, e.g. %s", len(removed), folder,
                 removed[0].name)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic writes (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        try:
            atomic_write(path, lambda fh: torch.save(checkpoint, fh))
        except OSError as exc:
            old = "the previous one is intact" if Path(path).exists() else "nothing was written"
            reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason} ({old})") from exc
