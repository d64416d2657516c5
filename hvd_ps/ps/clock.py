"""Group clocks of an async tier: how many exchanges each group has completed, how far ahead of
the others a leader's next exchange would be, and the wait that bounds it (``max_staleness``).

Every async trainer has one clock key (:class:`hvd_ps.ps.protocol.Clock`: per group of the
tier a count and a pace). A leader pushes its count once an exchange is complete (its pull
returned, so the servers had applied its push), with its pace (seconds per local step), and
pulls every group's with it, without waiting; the next exchange reads that pull.

The *staleness* of a group's exchange number ``k`` is how many exchanges it is ahead of the
slowest live other group when it starts it: ``k - min_j c_j`` over the other groups ``j``
that are live (``c_j`` the exchanges ``j`` completed; 0 if it is behind none).
``trainer.stats()['max_staleness_seen']`` is the largest a group started an exchange with.

Bounded staleness (SSP, as Petuum's parameter server had it): with ``max_staleness=s`` a
leader waits before exchange ``k`` until ``k - min_j c_j <= s``, polling the clocks (bounded
by ``HVD_PS_TIMEOUT``; the error names the groups it waited for). ``s = 1`` is lockstep:
exchange ``k`` starts once every other group completed exchange ``k - 1`` (``s = 0`` would
have every group wait for all the others, for ever). Counts only grow, so a count read earlier
never understates a gap: the bound holds at the servers too, where the audit
(``HVD_PS_AUDIT_DIR``) of the clock key shows every count with the others' before it.

Groups that stop counting: a group that finished training pushes :data:`~.protocol.CLOCK_DONE`
(at ``hvd_ps.shutdown``, before the job's last barrier), and on a tier with a roster a group
the roster does not count live (it died or left) is left out once a wait has lasted a second.
A group that rejoins starts at the larger of its predecessor's count and the slowest live
other group's, so the others never wait for the exchanges it missed.

Speed-adaptive periods (``period='auto'``): :meth:`Clock.period` gives a group's next number of
local steps, ``H = clamp(round(P * p_min / p), min_period, max_period)``, with ``P =
max_period`` (the base), ``p`` the group's own pace and ``p_min`` the smallest pace of the
groups still training, as published by their last exchanges before this group's previous
one: the fastest group keeps ``P``, and every group exchanges about every ``P * p_min``
seconds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Set

import numpy as np

from ..errors import TierError
from . import protocol

#: seconds between polls of the clocks while a leader waits: from the first to the last
FIRST_POLL, LAST_POLL = 0.001, 0.05
#: how often (seconds) a waiting leader asks the roster which groups are live
ASK_ROSTER = 1.0


class Clock:
    """One async trainer's clock on a leader: ``gid`` of ``groups`` global groups, waiting at
    most ``bound`` exchanges ahead (None: never waits). ``client`` is the leader's PS client
    (:class:`hvd_ps.ps.client.Client`); ``live`` asks the roster which groups are live (None
    if the tier has no roster, or it did not answer)."""

    def __init__(
        self,
        client: Any,
        name: str,
        gid: int,
        groups: int,
        bound: Optional[int],
        live: Callable[[], Optional[Set[int]]],
    ) -> None:
        import mxnet as mx

        self.client, self.gid, self.groups, self.bound, self.live = client, gid, groups, bound, live
        self.timeout = float(client.cfg.settings.timeout)
        #: the counts and paces as last pulled, and what this leader pushes (its count and
        #: pace, -1 elsewhere)
        self.view = mx.nd.zeros((2 * groups,))
        self.send = mx.nd.full((2 * groups,), -1.0)
        initial = mx.nd.zeros((2 * groups,))
        #: this group's seconds per local step (0: not measured yet)
        self.pace = 0.0
        self.key = client.register(name, initial, protocol.Clock(groups), out=self.view)
        #: exchanges this group completed (a rejoined group continues the count)
        self.count = 0
        self.max_seen = 0
        self.wait_s = 0.0
        self.finished = False
        if client.rejoined:  # the view holds the tier's clocks now
            counts = self.view.asnumpy()[:groups]
            own = counts[gid] if counts[gid] < protocol.CLOCK_DONE else 0.0
            others = self._others(counts, None)
            self.count = int(max(own, min(others) if others else 0.0))
            self._push(float(self.count))

    def _others(self, counts: Any, live: Optional[Set[int]]) -> List[float]:
        return [
            float(c)
            for j, c in enumerate(counts)
            if j != self.gid and c < protocol.CLOCK_DONE and (live is None or j in live)
        ]

    def _gap(self, k: int, live: Optional[Set[int]]) -> int:
        """How many exchanges exchange ``k`` is ahead of the slowest live other group."""
        others = self._others(self.view.asnumpy()[: self.groups], live)
        return max(0, k - int(min(others))) if others else 0

    def period(self, base: int, low: int, high: int, pace: float) -> int:
        """``period='auto'``: this group's next number of local steps (the module's
        docstring) at its own ``pace``: ``base`` scaled by the fastest group's pace over
        ``pace`` (``base`` while ``pace`` is unknown, 0). Paces are as last published; a
        finished group's are left out."""
        if pace <= 0.0:
            return base
        view = self.view.asnumpy()
        counts, paces = view[: self.groups], view[self.groups :]
        known = [
            float(p)
            for j, (c, p) in enumerate(zip(counts, paces))
            if j != self.gid and p > 0.0 and c < protocol.CLOCK_DONE
        ]
        fastest = min([pace] + known)
        return int(min(high, max(low, round(base * fastest / pace))))

    def _push(self, value: float) -> None:
        """Push ``value`` as this group's count (and its pace) and pull every group's,
        without waiting."""
        row = np.full((2 * self.groups,), -1.0, np.float32)
        row[self.gid] = value
        row[self.groups + self.gid] = min(self.pace, protocol.MAX_PACE)
        self.send[:] = row  # on MXNet's engine: after the previous push read it
        self.client.exchange(self.key, self.send, self.view, wait=False)

    def gate(self, what: str) -> None:
        """Before this group's next exchange: wait while it would be more than ``bound``
        exchanges ahead of the slowest live other group; record its staleness."""
        k = self.count + 1
        self.client.wait([self.view], f"reading the group clocks before {what}")
        gap = self._gap(k, None)
        if self.bound is not None and gap > self.bound:
            start = asked = time.monotonic()
            pause, live = FIRST_POLL, None
            while True:  # the view may be old: read the clocks afresh before any pause
                self.client.exchange(self.key, None, self.view, wait=True)
                gap = self._gap(k, live)
                if gap <= self.bound:
                    break
                now = time.monotonic()
                if now - start > self.timeout:
                    self._stalled(k, live)
                if now - asked >= ASK_ROSTER:
                    live, asked = self.live(), now
                time.sleep(pause)
                pause = min(2 * pause, LAST_POLL)
            self.wait_s += time.monotonic() - start
        self.max_seen = max(self.max_seen, gap)

    def _stalled(self, k: int, live: Optional[Set[int]]) -> None:
        counts = self.view.asnumpy()[: self.groups]
        assert self.bound is not None
        behind = [
            f"{j} (at {int(c)})"
            for j, c in enumerate(counts)
            if j != self.gid and c < k - self.bound and (live is None or j in live)
        ]
        raise TierError(
            f"group {self.gid} waited {self.timeout:g} s (HVD_PS_TIMEOUT) before its exchange "
            f"{k}: max_staleness={self.bound} needs every live group at exchange "
            f"{k - self.bound} or later, and group(s) {', '.join(behind)} did not get there; "
            "is that group stalled? (raise HVD_PS_TIMEOUT or max_staleness for groups this slow)"
        )

    def tick(self, pace: float = 0.0) -> None:
        """This group completed an exchange: push its count and ``pace`` (seconds per local
        step; 0: unknown) and pull every group's."""
        self.count += 1
        self.pace = pace
        self._push(float(self.count))

    def finish(self) -> None:
        """This group trains no more: it holds no other group back (idempotent)."""
        if self.finished:
            return
        self.finished = True
        self._push(protocol.CLOCK_DONE)
        self.client.wait([self.view], "marking this group finished on the group clocks")
