"""What every command-line entry point shares: logging set-up and the one-line error contract.

A :class:`~lit_sr.errors.LitSRError` (and, for the inference-side tools, a ValueError raised by a
component for a bad knob or size) ends the program with ``error: <one line>`` on stderr and exit
status 2 (3 for a pre-empted training run, which can be resumed); anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable

from lit_sr.errors import LitSRError


class _DropRecords(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_known_noise() -> None:
    """Silence third-party messages that ask nothing of a lit_sr user — each one narrowly, by its text.

    * Lightning's advertisement for its cloud logger, printed by every Trainer;
    * a deprecation inside Lightning's own pytree helper (torch 2.13 deprecated ``LeafSpec``), which
      users cannot act on.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropRecords("litlogger"))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")


def run_main(body: Callable[[], None], one_line: tuple[type[BaseException], ...] = (LitSRError,)) -> int:
    """Run ``body`` as a program: 0 on success, 2 with one ``error:`` line for ``one_line`` errors."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    try:
        body()
    except one_line as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))  # LitSRError subclasses may set their own (pre-emption: 3)
    return 0
