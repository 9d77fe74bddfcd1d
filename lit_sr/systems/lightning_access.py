"""Lightning internals lit_sr reads or resets, in one place (no public API exists for these).

* :func:`forget_logged` — Lightning keeps every value logged in an epoch and hands all of them to
  the loggers at each logging step, so a loss term switched off at a stage boundary would repeat
  its last value until the epoch ends. The training loop's ``ResultCollection``
  (``trainer._results``) is the only place to drop them.

``tests/test_stages.py::test_loggers_get_only_the_terms_computed_in_each_stage`` pins the behaviour:
a Lightning release that moves these fails it rather than logging stale values.
"""
from __future__ import annotations

from collections.abc import Callable


def forget_logged(trainer, keep: Callable[[str], bool]) -> None:
    """Reset every value logged this epoch whose name ``keep`` rejects (a reset value is skipped until logged again)."""
    for result in trainer._results.values():
        if not keep(result.meta.name):
            result.reset()
