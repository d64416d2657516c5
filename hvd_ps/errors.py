"""The exceptions hvd_ps raises.

Every failure a user can cause or meet (bad arguments, a bad group layout, an unreachable or
dead parameter-server tier, a stalled peer) surfaces as an :class:`HvdPsError`, so one
``except hvd_ps.HvdPsError`` catches all of them.
"""

from __future__ import annotations


class HvdPsError(RuntimeError):
    """Base class of every error hvd_ps raises on purpose."""


class ConfigError(HvdPsError, ValueError):
    """A bad argument or environment variable; the message names it."""


class TopologyError(HvdPsError):
    """The requested grouping of ranks is not a valid partition of the job."""


class TierError(HvdPsError):
    """The parameter-server tier failed: could not start, is unreachable, or died."""
