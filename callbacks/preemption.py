"""Pre-emption: SIGTERM, SIGINT and the SLURM requeue signal save ``last.ckpt`` at a step boundary.

A cluster that pre-empts a job sends SIGTERM (SLURM: the requeue signal, SIGUSR1 with
``--signal=USR1@90``, some time before). A signal only sets a flag; at the end of the current
training batch — a consistent point: the optimizer step is complete — every rank agrees to stop,
the checkpoint is written (``dirpath/last.ckpt``, atomically), a SLURM job is requeued
(``scontrol requeue $SLURM_JOB_ID``) on the requeue signal, and training stops with
:class:`Preempted`, which the entry point turns into one line and a non-zero exit status.
Resume with ``ckpt_path=last`` (the requeued job's command line can carry it from the start:
without a checkpoint it starts fresh).

Lightning's own SLURM handler saves from inside the signal handler, possibly in the middle of an
optimizer step; the entry point disables it (``SLURMEnvironment(auto_requeue=False)``) and this
callback does the requeue instead.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L

from lit_sr.errors import LitSRError

log = logging.getLogger(__name__)


class Preempted(LitSRError):
    """Training stopped on a signal after saving its checkpoint (exit status 3: resumable)."""

    exit_code = 3


class Preemption(L.Callback):
    """Save ``last.ckpt`` and stop cleanly on ``signals``; requeue a SLURM job on ``requeue_signal``.

    Args:
        dirpath: checkpoint folder (``last.ckpt`` is written there).
        signals: signal names that stop training (default SIGTERM, SIGINT and the requeue signal).
        requeue_signal: the signal SLURM sends before the end of the allocation (SIGUSR1).
        requeue: requeue the SLURM job (``scontrol requeue``) when that signal arrives.
    """

    def __init__(self, dirpath: str | Path, signals: list[str] | None = None, requeue_signal: str = "SIGUSR1",
                 requeue: bool = True) -> None:
        names = list(signals) if signals is not None else ["SIGTERM", "SIGINT", requeue_signal]
        unknown = [n for n in [*names, requeue_signal] if not hasattr(signal, n)]
        if unknown:
            raise ValueError(f"unknown signal name(s) {unknown}")
        self.dirpath = Path(dirpath)
        self.signals = [getattr(signal, n) for n in names]
        self.requeue_signal = getattr(signal, requeue_signal)
        self.requeue = bool(requeue)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            log.warning("received %s: stopping after the current training step", signal.Signals(signum).name)
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in self.signals:  # handlers belong to the main thread (Lightning runs training there)
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        local = self.received is not None
        stop = trainer.strategy.reduce_boolean_decision(local, all=False)  # one rank's signal stops them all
        if not stop:
            return
        name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, to resume
        requeued = ""
        if self.requeue and self.received == self.requeue_signal and os.environ.get("SLURM_JOB_ID"):
            requeued = self._requeue(trainer)
        raise Preempted(f"stopped by {name} at step {trainer.global_step}: saved {path}{requeued}; "
                        f"resume with ckpt_path=last")

    def _requeue(self, trainer: L.Trainer) -> str:
        if not trainer.is_global_zero:
            return ""
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"; requeue of SLURM job {job} failed ({exc})"
        return f"; requeued SLURM job {job}" if result.returncode == 0 else \
            f"; requeue of SLURM job {job} failed ({result.stderr.strip()[:200]})"

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
