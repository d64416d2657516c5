"""Rank 0's output for the examples, made to survive ``horovodrun`` / ``mpirun`` / ``hvdps-run``.

Open MPI gives every rank a pseudo-terminal as stdout (so ``isatty()`` is True even when
``horovodrun``'s own stdout is a pipe), reads it in whatever chunks arrive and prefixes each
chunk with ``[1,<rank>]<stdout>:``. A line written in several pieces — ``print()`` with several
arguments, or any ``print()`` under ``PYTHONUNBUFFERED=1``, where the newline is a write of its
own — comes out as several prefixed fragments on one line, and a bar redrawn with ``\\r`` turns
into a run-on line. So here every message is one whole line written with one ``write(2)``, and
the in-place tqdm bar is drawn only on a real terminal that no launcher sits in front of.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Callable, List, Optional

from tqdm import tqdm

#: the modes of ``--progress``: ``auto`` picks ``bar`` or ``lines``
MODES = ("auto", "bar", "lines", "none")

# Variables that MPI launchers set in every rank they start (Open MPI's mpirun, which
# horovodrun and hvdps-run run; MPICH/Intel MPI's Hydra; PMIx-based launchers).
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def under_launcher(environ: Optional[dict] = None) -> bool:
    """True when an MPI launcher started this process (and so collects and tags its output)."""
    env = os.environ if environ is None else environ
    return any(name in env for name in _LAUNCHER_VARS)


def resolve_mode(mode: str, isatty: bool, launched: bool) -> str:
    """``auto`` -> ``bar`` on a terminal no launcher sits in front of, else ``lines``."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} must be one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "bar" if isatty and not launched else "lines"


def emit(text: str, fd: Optional[int] = None) -> None:
    """Write ``text`` and a newline with a single ``write(2)`` (loops only on a short write)."""
    sys.stdout.flush()  # anything Python still buffers goes first, in order
    data = (text.rstrip("\n") + "\n").encode()
    fd = sys.stdout.fileno() if fd is None else fd
    while data:
        data = data[os.write(fd, data) :]


class WholeLines:
    """A file for tqdm: each redraw (``\\r`` + status + padding) becomes one whole line."""

    def __init__(self, write: Optional[Callable[[str], None]] = None) -> None:
        self._write = write or emit
        self._pending: List[str] = []

    def write(self, s: str) -> None:
        self._pending.append(s)

    def flush(self) -> None:
        text, self._pending = "".join(self._pending), []
        parts = [p.rstrip() for p in re.split(r"[\r\n]", text) if p.strip()]
        if parts:  # a clearing redraw is only blanks and carriage returns: nothing to show
            self._write(parts[-1])


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: every redraw comes from the training loop


class Console:
    """What rank 0 shows. ``lines`` always go out (on rank 0); ``bar`` is a per-epoch tqdm bar:
    in place on a terminal, or (mode ``lines``) a whole line at most every ``interval`` seconds,
    and only once an epoch has run that long — so short epochs print just their epoch line.
    """

    def __init__(self, rank0: bool, mode: str = "auto", interval: float = 10.0) -> None:
        self.rank0 = rank0
        self.interval = interval
        self.mode = resolve_mode(mode, sys.stdout.isatty(), under_launcher())

    def line(self, text: str) -> None:
        if not self.rank0:
            return
        if self.mode == "bar":
            tqdm.write(text, file=sys.stdout)  # clears and redraws a bar that is showing
            sys.stdout.flush()
        else:
            emit(text)

    def bar(self, total: int, desc: str) -> tqdm:
        if not self.rank0 or self.mode == "none":
            return _Bar(total=total, disable=True)
        if self.mode == "bar":
            return _Bar(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stdout)
        return _Bar(
            total=total,
            desc=desc,
            leave=False,
            ascii=True,
            ncols=100,
            mininterval=self.interval,
            delay=self.interval,
            file=WholeLines(),
        )


def chance_warning(accuracy: float, classes: int, samples: int) -> Optional[str]:
    """A warning line when ``accuracy`` on ``samples`` test samples is no better than guessing
    one of ``classes`` classes: within three binomial standard deviations of ``1/classes``
    (or not a number). None when the model learned something."""
    chance = 1.0 / classes
    bound = chance + 3.0 * math.sqrt(chance * (1.0 - chance) / max(samples, 1))
    if math.isfinite(accuracy) and accuracy > bound:
        return None
    return (
        f"WARNING: the final accuracy {100 * accuracy:.2f}% is no better than chance "
        f"({100 * chance:.0f}% for {classes} classes; at most {100 * bound:.1f}% on "
        f"{samples} test samples): the job ran, but its model did not learn"
    )
