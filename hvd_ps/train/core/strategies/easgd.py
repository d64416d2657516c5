"""EASGD: elastic averaging SGD, each group pulled towards a centre the servers keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .... import arguments
from ....errors import ConfigError
from ....ps import protocol
from ..buckets import Bucket
from ..interfaces import Flat, PSClient
from .base import Exchange, Send, ServerOptimizer, Strategy, register, store


@dataclass(frozen=True, repr=False)  # Strategy.__repr__
class EASGD(Strategy):
    """Elastic averaging SGD (Zhang, Choromanska, LeCun 2015). Every ``period`` steps the
    leader pulls the centre ``c``, computes ``d = alpha (x - c)``, sets ``x -= d`` and pushes
    ``d``; the servers add it, ``c += d``. ``alpha`` defaults to ``0.9 / G`` (``beta = G alpha
    = 0.9``); sync mode needs ``G alpha < 1`` to be stable and rejects anything else.

    ``overlap=tau`` (``0 <= tau < period``) computes and pushes ``d = alpha (x_t - c)`` from a
    snapshot ``x_t`` and subtracts it ``tau`` steps later: ``x = x_{t+tau} - d``.

    With ``mode='async'``: ``max_staleness=s`` (a group waits rather than run more than ``s``
    exchanges ahead of the slowest live one) and ``period='auto'`` with ``min_period`` and
    ``max_period`` (each group's local steps from its pace, the fastest group's ``max_period``;
    EASGD's ``d`` needs no weight): docs/stragglers.md.

    Example::

        sync = hvd_ps.EASGD(period=4, alpha=0.2, mode='async')
        sync = hvd_ps.EASGD(period=16, overlap=8)
    """

    period: Union[int, str] = 4
    alpha: Optional[float] = None
    mode: str = "sync"
    overlap: int = 0
    max_staleness: Optional[int] = None
    min_period: Optional[int] = None
    max_period: Optional[int] = None
    quorum: Optional[int] = None
    grace: Optional[float] = None

    def __post_init__(self) -> None:
        self._check_common()
        if self.alpha is not None:
            store(self, alpha=arguments.number("alpha", self.alpha, 0.0, 1.0))

    def alpha_for(self, num_groups: int) -> float:
        """``alpha`` for a tier of ``num_groups`` groups (default ``0.9 / G``)."""
        return 0.9 / num_groups if self.alpha is None else self.alpha

    def validate(self, num_groups: int) -> None:
        a = self.alpha_for(num_groups)
        if self.mode == "sync" and num_groups * a >= 1.0:
            raise ConfigError(
                f"EASGD alpha={a:g} with {num_groups} groups gives beta = G*alpha = "
                f"{num_groups * a:g} >= 1, which is unstable in sync mode; use alpha < "
                f"{1.0 / num_groups:g} (0.9/G = {0.9 / num_groups:g} is typical)"
            )


class EASGDExchange(Exchange):
    def __init__(
        self, s: EASGD, groups: int, wire: Optional[str], _: Optional[ServerOptimizer]
    ) -> None:
        super().__init__(s, groups, wire)
        self.rule = protocol.Add()  # c += d
        self.alpha = s.alpha_for(groups)

    def exchange(self, b: Bucket, client: PSClient) -> None:
        # Pull c. In sync mode this pull is ordered after our previous push, whose round
        # closes only when every group pushed, so c is the centre after the last round.
        client.exchange(b.key, None, b.pulled, wait=False)
        b.params.elastic(b.pulled, self.alpha, out=b.out, dtype=self.wire)
        client.push(b.key, b.out)

    def launch(self, b: Bucket, client: PSClient) -> None:
        # pull c (after our previous push, as in exchange()), d = alpha (x_t - c), push d;
        # all of it on the snapshot, so the parameters' next update never waits for the pull
        a = self.alpha
        client.exchange(b.key, None, b.pulled, wait=False)
        b.snapshot().pack_axpby(b.pulled, a, -a, dtype=self.wire, out=b.out)
        client.push(b.key, b.out)

    def apply(self, b: Bucket) -> None:
        b.params.unpack(b.out, alpha=-1.0, beta=1.0)  # x -= d, d as pushed (after any cast)

    def wire_send(self, b: Bucket, src: Flat, blocking: bool) -> Optional[Send]:
        # d = alpha (x - c) against the copy of c as of the last exchange; what quantization
        # drops from d stays in the residual and reaches the centre later
        if blocking:
            b.params.elastic(b.pulled, self.alpha, out=b.out)  # and x -= d at once
            return None
        return Send(src, b.pulled, self.alpha, -self.alpha, keep=True)  # applied later

    def wire_apply(self, b: Bucket, blocking: bool) -> None:
        if not blocking:
            self.apply(b)  # x -= d


register(EASGD, EASGDExchange)
