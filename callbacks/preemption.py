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

Every phase of ``fit`` has a defined outcome: a signal during training stops at the end of the
current step; during a validation run (the final one included), at its end, after saving; after
training (the final checkpoint, the export in ``on_fit_end``), the run finishes what it is
writing — never a half-written export — and then exits with status 3 as well. The handlers are
installed in ``setup``, before Lightning registers its own: Lightning then restores *these* at
its internal teardown (which comes before ``on_fit_end``), not the default action that would kill
the process in the middle of the export. From ``on_train_start`` they replace Lightning's SIGTERM
handler, whose flag would make its loops end a validation run with ``SystemExit`` (status 0).
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
        self._active = False

    def _handle(self, signum: int, frame) -> None:
        if not self._active:  # left installed by Lightning after the run ended: act as before the run
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        if self.received is None:
            log.warning("received %s: stopping at the next safe point (end of this training step or validation "
                        "run; after training, once the checkpoint and export are written)", signal.Signals(signum).name)
        self.received = signum

    def _install(self) -> None:
        if self._active:
            return
        for sig in self.signals:  # handlers belong to the main thread (Lightning runs training there)
            self._previous[sig] = signal.signal(sig, self._handle)
        self._active = True

    def _restore(self) -> None:
        if not self._active:
            return
        self._active = False
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            self._install()
            return
        # Lightning has wrapped our SIGTERM handler into its own, which makes its loops raise
        # SystemExit(0) in the middle of a validation run: the signal is ours alone from here on.
        for sig in self.signals:
            signal.signal(sig, self._handle)

    def _signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        """At a consistent point: if any rank was signalled, save ``last.ckpt`` (and requeue) and stop."""
        local = self.received is not None
        stop = trainer.strategy.reduce_boolean_decision(local, all=False)  # one rank's signal stops them all
        if not stop:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, to resume
        requeued = ""
        if self.requeue and self.received == self.requeue_signal and os.environ.get("SLURM_JOB_ID"):
            requeued = self._requeue(trainer)
        raise Preempted(f"stopped by {self._signal_name()} at step {trainer.global_step}: saved {path}{requeued}; "
                        f"resume with ckpt_path=last")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A validation run inside fit (the final one too, after which no training step would look).
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer)

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

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After ``on_fit_end``: a signal that came once training was over ends the (finished) run with status 3."""
        self._restore()
        if stage == "fit" and self.received is not None:
            raise Preempted(f"received {self._signal_name()} after training: the run finished what it was writing "
                            f"(checkpoint in {self.dirpath}, the export if enabled) and stops here")
