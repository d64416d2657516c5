"""Checking a user's arguments: the one place that says what a valid integer, number or flag is.

Every check raises a :class:`~hvd_ps.errors.ConfigError` that names the argument and says what
it must be, and returns the value normalised (an ``int``, a ``float``, a ``bool``). Bools are
refused where a number is expected (``True`` is an ``int`` to Python, never to a user), and so
is nan, for which every comparison is false.

Example::

    period = integer("period", period, low=1)
    alpha = number("alpha", alpha, 0.0, 1.0)               # 0 < alpha < 1
    momentum = number("momentum", m, 0.0, 1.0, open_low=False)  # 0 <= momentum < 1
"""

from __future__ import annotations

import math
from typing import Any, Optional, Type

from .errors import ConfigError, HvdPsError


def integer(
    name: str,
    value: Any,
    low: int = 0,
    high: Optional[int] = None,
    hint: str = "",
    error: Type[HvdPsError] = ConfigError,
    high_name: str = "",
) -> int:
    """``value`` as an ``int`` with ``low <= value`` (and ``value < high`` if given).

    ``hint`` follows the message after a colon (what to do, or what the argument means);
    ``error`` is the class raised (a :class:`~hvd_ps.errors.TopologyError` for a grouping);
    ``high_name`` names the argument ``high`` comes from (``overlap < period (4)``)."""
    inside = not isinstance(value, bool) and isinstance(value, int) and value >= low
    if inside and high is not None:
        inside = value < high
    if not inside:
        bound = f"{high_name} ({high})" if high_name else f"{high}"
        span = f">= {low}" if high is None else f"with {low} <= {name} < {bound}"
        raise error(f"{name} must be an integer {span}, got {value!r}" + _tail(hint))
    return int(value)


def number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    open_low: bool = True,
    hint: str = "",
) -> float:
    """``value`` as a ``float`` in ``(low, high)`` (``[low, high)`` if not ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}" + _tail(hint))
    inside = (low < value if open_low else low <= value) and value < high
    if not inside:  # also nan
        if high == math.inf:
            span = f"{'>' if open_low else '>='} {low:g}"
        else:
            span = f"in {'(' if open_low else '['}{low:g}, {high:g})"
        raise ConfigError(f"{name} must be a number {span}, got {value!r}" + _tail(hint))
    return float(value)


def flag(name: str, value: Any) -> bool:
    """``value``, which must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def _tail(hint: str) -> str:
    return f": {hint}" if hint else ""
