"""One run folder, one live run: the lock, the checkpoint to resume from, and the logs' resume point.

* :class:`RunLock` — ``run_dir/.lit_sr.lock`` holds the pid and host of the run using the folder;
  a second live run in the same folder is refused with one line (two runs would interleave their
  logs and overwrite each other's checkpoints and export). A lock whose process is gone (a killed
  run) is taken over. ``run_lock=false`` shares the folder on purpose.
* :func:`resolve_ckpt_path` — ``ckpt_path=last`` means ``run_dir/checkpoints/last.ckpt`` when it
  exists and a fresh start otherwise (so a requeued job can always pass it); any checkpoint is
  read with ``weights_only`` first, so a crafted file is refused before Lightning touches it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from lit_sr.config.loading import read_checkpoint
from lit_sr.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)
LOCK_NAME = ".lit_sr.lock"


def is_launch_rank_zero() -> bool:
    """True in the process that owns the run (not in DDP workers started by a launcher)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class RunLock:
    """The run folder's lock file (see the module docstring); a context manager."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is not None and self._alive(other):
                    raise ConfigError(
                        f"run_dir {self.path.parent} is in use by pid {other.get('pid')} on {other.get('host')} "
                        f"(since {other.get('started')}): use another run_dir, or run_lock=false to share it") from None
                log.warning("taking over the stale lock of a run that is gone (%s)", other)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise ConfigError(f"cannot lock run_dir {self.path.parent} (another run keeps taking it)")

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(other: dict) -> bool:
        if other.get("host") != socket.gethostname():
            return True  # another machine's run: cannot check, so it counts as alive
        try:
            os.kill(int(other.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, TypeError, OverflowError):
            return True
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> tuple[str | None, int]:
    """The checkpoint to resume from (or None) and its optimizer step (0 for a fresh start)."""
    if ckpt_path in (None, ""):
        return None, 0
    if ckpt_path == "last":
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("ckpt_path=last: no %s yet, starting from scratch", last)
            return None, 0
        ckpt_path = str(last)
    path = Path(ckpt_path)
    if not path.is_file():
        raise WeightsError(f"ckpt_path: checkpoint not found: {path}")
    return str(path), int(read_checkpoint(path).get("global_step", 0))
