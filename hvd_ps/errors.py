"""The exceptions hvd_ps raises.

Every failure a user can cause or meet (bad arguments, a bad group layout, an unreachable or
dead parameter-server tier, a stalled peer) surfaces as an :class:`HvdPsError`, so one
``except hvd_ps.HvdPsError`` catches all of them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional


class HvdPsError(RuntimeError):
    """Base class of every error hvd_ps raises on purpose.

    ``every_rank`` is true for an error that every rank of the job raises alike (a bad layout,
    a model that differs across groups): a job that dies of it reports it once, from rank 0.
    """

    every_rank = False
    #: the global rank that reports the error when the ranks of one group raise it alike
    #: (None: rank 0 for an ``every_rank`` error, else each rank that has it)
    reporter: Optional[int] = None


@contextmanager
def same_on_every_rank() -> Iterator[None]:
    """An :class:`HvdPsError` raised inside comes from the script's own arguments (a strategy's,
    the trainer's), which every rank of a job passes alike: it is reported once per job, by
    rank 0 (``every_rank``). A rank that alone raises one ends silently, and the job with it."""
    try:
        yield
    except HvdPsError as err:
        err.every_rank = True
        raise


class ConfigError(HvdPsError, ValueError):
    """A bad argument or environment variable; the message names it."""


class TopologyError(HvdPsError):
    """The requested grouping of ranks is not a valid partition of the job (every rank
    validates the same layout, so every rank raises it)."""

    every_rank = True


class TierError(HvdPsError):
    """The parameter-server tier failed: could not start, is unreachable, or died."""


class CheckpointError(HvdPsError):
    """A checkpoint cannot be used: torn, foreign, corrupt, of another version, or saved by a
    job that differs from this one (the message names what differs)."""


class NonFiniteError(HvdPsError):
    """A group's leader refused to push NaN or inf to the PS tier (:mod:`hvd_ps.train.core.finite`);
    the message names the step and the parameters. Every rank of that group raises it; the leader
    reports it."""
