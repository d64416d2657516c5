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
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

#: Exit status of a process that gave up on a wait, or saw a part of the PS tier die.
EXIT_CODE = 75
#: seconds between two looks of the watcher (see :func:`watch`) while a bounded wait runs
WATCH_PERIOD_S = 0.5

_hooks: List[Callable[[], None]] = []
#: what the watcher asks while a bounded wait runs: why the wait can never end, or None
_check: Optional[Callable[[], Optional[str]]] = None
_waits = 0
_waits_lock = threading.Lock()
_watcher: Optional[threading.Thread] = None


def watch(check: Optional[Callable[[], Optional[str]]]) -> None:
    """While any :func:`deadline` of this process runs, call ``check`` every
    :data:`WATCH_PERIOD_S` seconds (from a thread of its own); a message it returns ends the
    process at once, as a deadline that fired would. ``None`` stops watching. The training
    side uses it to name a rank that never joins a collective (:mod:`hvd_ps.train.calls`)."""
    global _check, _watcher
    _check = check
    if check is not None and _watcher is None:
        _watcher = threading.Thread(target=_watch_loop, name="hvd_ps-deadline-watch", daemon=True)
        _watcher.start()


def _watch_loop() -> None:
    while True:
        time.sleep(WATCH_PERIOD_S)
        check = _check
        if check is None or not _waits:
            continue
        try:
            why = check()
        except Exception:  # a watcher that fails must not end a job that would go on
            continue
        if why is not None:
            fatal(why)


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
    global _waits
    with _waits_lock:
        _waits += 1
    try:
        yield
    finally:
        timer.cancel()
        with _waits_lock:
            _waits -= 1
