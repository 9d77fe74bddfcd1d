"""Lightning internals lit_sr reads or resets, in one place (no public API exists for these).

A base module (it imports nothing of the project), so the data layer, the systems and the
callbacks all use the same functions:

* :func:`forget_logged` — Lightning keeps every value logged in an epoch and hands all of them to
  the loggers at each logging step, so a loss term switched off at a stage boundary would repeat
  its last value until the epoch ends. The training loop's ``ResultCollection``
  (``trainer._results``) is the only place to drop them.
* :func:`batches_done` — how many batches of the current epoch the fit loop has processed (a
  resumed run's position inside its epoch: what exact mid-epoch resume starts from).
* :func:`is_last_batch_of_epoch` — whether the batch just run is the epoch's last.

``tests/test_lightning_access.py`` pins what each must return, and the behaviours that rest on
them are tested end to end (stale loss terms never logged, resume mid-epoch reproduces the straight
run, the last step is logged): a Lightning release that moves these fails there rather than
logging stale values or resuming at the wrong batch.
"""
from __future__ import annotations

from collections.abc import Callable


def forget_logged(trainer, keep: Callable[[str], bool]) -> None:
    """Reset every value logged this epoch whose name ``keep`` rejects (a reset value is skipped until logged again)."""
    for result in trainer._results.values():
        if not keep(result.meta.name):
            result.reset()


def batches_done(trainer) -> int:
    """Batches of the current epoch processed so far (including a batch a checkpoint was saved at the end of)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def is_last_batch_of_epoch(trainer) -> bool:
    """Whether the training batch that just ran is the last of its epoch."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
