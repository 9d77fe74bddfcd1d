"""One run folder, one live run: the lock, the checkpoint to resume from, and the logs' resume point.

* :class:`RunLock` — ``run_dir/.lit_sr.lock`` names the run using the folder (a random owner
  token, its job, host and pid); a second live run in the same folder is refused with one line (two
  runs would interleave their logs and overwrite each other's checkpoints and export).
  ``run_lock=false`` shares the folder on purpose. The lock is a *lease*:

  - it is created atomically, complete: the record is written to a private file that is then
    hard-linked to the lock name (``link`` fails if the name exists), so nobody ever reads a
    half-written lock;
  - its holder refreshes it (the file's mtime) every ``heartbeat`` seconds;
  - a lock is taken over when it belongs to the same scheduler job (a requeued job lands on any
    node, and the scheduler runs one incarnation at a time), when its process is gone (same host),
    or when its heartbeat is older than ``ttl`` seconds (a node that died); otherwise it is alive;
  - a take-over happens under a short-lived break lock and only if the lock still holds the record
    that was judged stale, so two contenders can never both end up holding it.
* :func:`resolve_ckpt_path` — ``ckpt_path=last`` means ``run_dir/checkpoints/last.ckpt`` when it
  exists and a fresh start otherwise (so a requeued job can always pass it); any checkpoint is
  read with ``weights_only`` first, so a crafted file is refused before Lightning touches it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from lit_sr.config.loading import read_checkpoint
from lit_sr.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)
LOCK_NAME = ".lit_sr.lock"


def is_launch_rank_zero() -> bool:
    """True in the process that owns the run (not in DDP workers started by a launcher)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def scheduler_job_id() -> str | None:
    """The scheduler's id of this job, stable across requeues (SLURM; array tasks included)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"slurm:{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm:{job}" if job else None


class RunLock:
    """The run folder's lease (see the module docstring); a context manager.

    Args:
        run_dir: the run folder.
        job_id: the job this run belongs to (None: from the scheduler's environment, if any).
        ttl: seconds without a heartbeat after which another host's lock counts as dead.
        heartbeat: seconds between refreshes of the lock while it is held.
    """

    def __init__(self, run_dir: str | Path, job_id: str | None = None, ttl: float = 300.0,
                 heartbeat: float | None = None) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.job = str(job_id) if job_id else scheduler_job_id()
        self.ttl = float(ttl)
        self.heartbeat = float(heartbeat) if heartbeat else max(1.0, self.ttl / 5)
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ acquiring
    def _record(self) -> dict:
        return {"token": self.token, "job": self.job, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _link_new(self, path: Path, record: dict) -> bool:
        """Create ``path`` holding ``record``, complete or not at all; False if it exists."""
        tmp = path.with_name(f"{path.name}.{self.token}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            if self._link_new(self.path, self._record()):
                self._hold()
                return
            other = self._read(self.path)
            if other is None:  # released between our link and our read: try again
                continue
            why = self._stale(other, self.path)
            if why is None:
                raise ConfigError(
                    f"run_dir {self.path.parent} is in use by pid {other.get('pid')} on {other.get('host')} "
                    f"(job {other.get('job') or 'none'}, since {other.get('started')}): use another run_dir, "
                    "or run_lock=false to share it") from None
            if self._break(other, why):
                continue
            time.sleep(0.05)  # another contender is breaking it: look again
        raise ConfigError(f"cannot lock run_dir {self.path.parent} (other runs keep taking it)")

    def _break(self, stale: dict, why: str) -> bool:
        """Remove the lock if it still holds ``stale``, under the break lock; False if busy."""
        breaker = self.path.with_name(self.path.name + ".break")
        if not self._link_new(breaker, self._record()):
            other = self._read(breaker)
            if other is not None and self._stale(other, breaker) is not None:
                breaker.unlink(missing_ok=True)  # a contender died while breaking (rare): clear it
            return False
        try:
            if (self._read(self.path) or {}).get("token") == stale.get("token"):
                log.warning("taking over the run lock of %s (%s)", _who(stale), why)
                self.path.unlink(missing_ok=True)
            return True
        finally:
            breaker.unlink(missing_ok=True)

    def _stale(self, other: dict, path: Path) -> str | None:
        """Why the lock record ``other`` no longer protects a live run (None: it does)."""
        if other.get("host") == socket.gethostname():  # this host can tell for sure
            try:
                os.kill(int(other.get("pid", -1)), 0)
            except ProcessLookupError:
                return "its process is gone"
            except (PermissionError, ValueError, TypeError, OverflowError):
                pass
            else:
                return None
        if self.job and other.get("job") == self.job:
            return f"the same job {self.job}, requeued"
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "released"
        return f"no heartbeat for {age:.0f} s" if age > self.ttl else None

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ holding
    def _hold(self) -> None:
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self._mine():
                log.warning("the run lock %s was taken over by another run (no heartbeat for over %g s?)",
                            self.path, self.ttl)
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # a shared file system hiccup: the next beat tries again

    def _mine(self) -> bool:
        return (self._read(self.path) or {}).get("token") == self.token

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._mine():  # never remove a lock another run took over
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _who(record: dict) -> str:
    return f"pid {record.get('pid')} on {record.get('host')} (job {record.get('job') or 'none'})"


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
