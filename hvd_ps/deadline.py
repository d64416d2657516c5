"""Bounded waits.

ps-lite and MXNet block inside C++ (connect, barrier, a sync round that never closes) where
Python cannot interrupt them. :func:`deadline` arms a timer around such a wait; if the wait
is still running when it fires, the process prints an :class:`~hvd_ps.errors.HvdPsError`
message that names what was being waited for and exits with :data:`EXIT_CODE`. Under
``mpirun``/``horovodrun`` that ends the whole job, non-zero, with the message in its log.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, List

#: Exit status of a process that gave up on a wait, or saw a part of the PS tier die.
EXIT_CODE = 75

_hooks: List[Callable[[], None]] = []


def on_fatal(hook: Callable[[], None]) -> None:
    """Run ``hook`` (e.g. stop child servers) before a fatal exit."""
    _hooks.append(hook)


def fatal(message: str) -> None:
    """Print ``HvdPsError: message`` and end this process now, from any thread."""
    # to the file descriptor itself: sys.stderr may be replaced (a test runner's capture, a
    # notebook) by something that dies with the process before it shows what it holds
    sys.stderr.flush()
    os.write(2, f"\nhvd_ps: HvdPsError: {message}\n".encode("utf-8", "replace"))
    for hook in list(_hooks):
        try:
            hook()
        except Exception:  # the exit matters more than a failing clean-up
            pass
    os._exit(EXIT_CODE)


@contextmanager
def deadline(what: str, seconds: float) -> Iterator[None]:
    """End the process with a clear message if the body takes longer than ``seconds``."""
    timer = threading.Timer(
        seconds,
        fatal,
        args=(f"{what} did not finish within {seconds:g} s (HVD_PS_TIMEOUT)",),
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
