"""How a training process that fails ends: one clean line per hvd_ps error, once per job.

Under ``horovodrun`` every rank of a job that dies of the same error would print its own
traceback, and the copies interleave into an unreadable block. :func:`install` (called by
:func:`hvd_ps.init`) replaces ``sys.excepthook`` so that an uncaught
:class:`~hvd_ps.errors.HvdPsError` prints one line, ``hvd_ps: TopologyError: ...``, and the
process exits non-zero:

* an error every rank raises alike (``every_rank``, e.g. a bad layout) is printed by global
  rank 0 only; the other ranks exit without a word (a moment later, so that ``mpirun`` does
  not end rank 0 before it has spoken);
* an error the ranks of one group raise alike (its ``reporter`` set, e.g. a NaN the leader
  refused to push) is printed by that rank only;
* any other hvd_ps error is printed by the rank that has it;
* ``HVD_PS_LOG_LEVEL=DEBUG`` prints the full traceback instead, and an error from user code
  (anything that is not an HvdPsError) always keeps its traceback.

:func:`crashed` tells the runtime's exit handler that the program died of an exception.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from . import config
from .errors import HvdPsError

#: how long a silent rank lingers before exiting, so rank 0's line gets out first (1 s was
#: too short once on a loaded 2-core machine: mpirun ended rank 0 before it had spoken)
QUIET_RANK_DELAY_S = 2.0

_crashed = False
_previous = sys.excepthook


def crashed() -> bool:
    """True once an uncaught exception reached the hook."""
    return _crashed


def one_line(err: BaseException) -> str:
    """``hvd_ps: <class>: <message>`` on one line (newlines of the message folded)."""
    text = " ".join(str(err).split())
    return f"hvd_ps: {type(err).__name__}: {text}"


def excepthook(kind: Any, value: Any, tb: Any) -> None:
    global _crashed
    _crashed = True
    if not isinstance(value, HvdPsError) or config.debug_errors():
        _previous(kind, value, tb)
        return
    reporter = value.reporter if value.reporter is not None else (0 if value.every_rank else None)
    if reporter is not None and config.launch_rank() != reporter:
        time.sleep(QUIET_RANK_DELAY_S)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(2, (one_line(value) + "\n").encode("utf-8", "replace"))


def quiet_exit(code: int, delay: float = QUIET_RANK_DELAY_S) -> None:
    """End this process without a word after ``delay`` seconds: another rank reports why."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(delay)
    os._exit(code)


def install() -> None:
    """Make :func:`excepthook` the process's hook (once; the previous one stays the fallback)."""
    global _previous
    if sys.excepthook is not excepthook:
        _previous = sys.excepthook
        sys.excepthook = excepthook
