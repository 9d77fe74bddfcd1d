"""What every command-line entry point shares: logging set-up and the one-line error contract.

A :class:`~lit_sr.errors.LitSRError` (and, for the inference-side tools, a ValueError raised by a
component for a bad knob or size) ends the program with ``error: <one line>`` on stderr and exit
status 2 (3 for a pre-empted training run, which can be resumed); anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from lit_sr.errors import LitSRError


def run_main(body: Callable[[], None], one_line: tuple[type[BaseException], ...] = (LitSRError,)) -> int:
    """Run ``body`` as a program: 0 on success, 2 with one ``error:`` line for ``one_line`` errors."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        body()
    except one_line as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))  # LitSRError subclasses may set their own (pre-emption: 3)
    return 0
