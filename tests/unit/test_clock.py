"""hvd_ps.ps.clock: a leader's group clock against a tier held in process.

:class:`Tier` stands for the leader's PS client: one clock key whose pushes go through the
servers' own rule (:class:`hvd_ps.ps.rules.Clock`), and pulls that may let the other groups move
first (``tier.on_pull``), so the staleness wait, its bound in time, the groups that stop
counting, a rejoin and the choice of a period run as they do on a leader.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, List, Optional

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.errors import TierError
from hvd_ps.ps import clock, protocol, rules

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference as ref  # noqa: E402

DONE = protocol.CLOCK_DONE


class Tier:
    """A leader's PS client with one clock key, as the servers would keep it."""

    def __init__(self, groups: int, timeout: float = 5.0, counts=None, rejoined=False) -> None:
        self.groups = groups
        self.cfg = SimpleNamespace(settings=SimpleNamespace(timeout=timeout))
        self.rejoined = rejoined
        self.stored = None if counts is None else mx.nd.array(list(counts) + [0.0] * groups)
        self.rule = None
        self.pulls = 0
        self.on_pull: Optional[Callable[[Tier], None]] = None

    def register(self, name, initial, rule, out=None):
        assert rule == protocol.Clock(self.groups)
        self.rule = rules.make(rule, 0, lambda key: None)
        if self.stored is None:
            self.stored = initial.copy()
        self.stored.copyto(out)
        return 0

    def exchange(self, key, push, pull, wait=True):
        if push is not None:
            self.rule.update(push, self.stored)
        self.pulls += 1
        if self.on_pull is not None:
            self.on_pull(self)
        self.stored.copyto(pull)

    def wait(self, arrays, what):
        for a in arrays:
            a.wait_to_read()

    def push_as(self, g: int, count: float, pace: float = -1.0) -> None:
        """Group ``g``'s leader pushes its count (and pace)."""
        row = np.full(2 * self.groups, -1.0, np.float32)
        row[g], row[self.groups + g] = count, pace
        self.rule.update(mx.nd.array(row), self.stored)

    def counts(self) -> List[float]:
        return self.stored.asnumpy()[: self.groups].tolist()


def make(tier: Tier, gid: int, bound: Optional[int], live=lambda: None) -> clock.Clock:
    return clock.Clock(tier, "t.clock", gid, tier.groups, bound, live)


def test_without_a_bound_nobody_waits_and_the_staleness_is_recorded():
    tier = Tier(3)
    c = make(tier, 0, None)
    for _ in range(4):
        c.gate("an exchange")
        c.tick(0.01)
    assert c.count == 4 and tier.counts() == [4, 0, 0]
    assert c.max_seen == 4 and c.wait_s == 0.0  # exchange 4 started 4 ahead of groups 1, 2


def test_a_bounded_leader_waits_until_the_slowest_group_is_close_enough():
    tier = Tier(2)
    c = make(tier, 0, 1)
    c.gate("exchange 1")  # 1 ahead of group 1 at 0: allowed
    c.tick()

    def other_moves(t: Tier) -> None:  # group 1 completes its exchange 1 at the third poll
        if t.pulls == 3:
            t.push_as(1, 1)

    tier.on_pull = other_moves
    before = tier.pulls
    c.gate("exchange 2")
    assert tier.pulls - before >= 2 and tier.counts() == [1, 1]
    assert c.max_seen == 1 and c.wait_s > 0


def test_a_wait_that_lasts_the_timeout_names_the_groups_behind():
    tier = Tier(3, timeout=0.3)
    c = make(tier, 0, 2)
    tier.push_as(1, 5)
    for _ in range(2):
        c.gate("an exchange")
        c.tick()
    start = time.monotonic()
    with pytest.raises(TierError) as err:
        c.gate("the PS exchange at step 12")
    assert time.monotonic() - start < 3.0
    text = str(err.value)
    assert "group 0 waited 0.3 s (HVD_PS_TIMEOUT) before its exchange 3" in text
    assert "max_staleness=2 needs every live group at exchange 1 or later" in text
    assert "group(s) 2 (at 0) did not get there" in text and "1 (at" not in text


def test_groups_that_finished_or_that_the_roster_counts_dead_hold_nobody_back(monkeypatch):
    tier = Tier(3)
    c = make(tier, 0, 1, live=lambda: {0, 1})  # group 2 died at 0
    tier.push_as(1, DONE)  # group 1 finished
    monkeypatch.setattr(clock, "ASK_ROSTER", 0.0)
    c.gate("exchange 1")
    c.tick()
    c.gate("exchange 2")  # held only by group 2, which the roster says is dead
    assert c.max_seen == 1 and c.wait_s < 1.0  # (exchange 1 started 1 ahead of group 2)


def test_a_rejoining_group_starts_at_the_slowest_live_count_and_says_so():
    tier = Tier(3, counts=[5, 2, 7], rejoined=True)
    c = make(tier, 1, 1)
    assert c.count == 5 and tier.counts() == [5, 5, 7]  # it missed exchanges 3..5
    c.finish()
    assert tier.counts() == [5, DONE, 7]


@pytest.mark.parametrize(
    "own, others, base, low, high",
    [(0.04, [0.01, 0.0], 8, 1, 8), (0.01, [0.04], 8, 1, 8), (0.5, [0.01], 16, 2, 16),
     (0.0, [0.01], 8, 1, 8), (0.03, [0.01, 0.02], 16, 1, 12)],
)  # fmt: skip
def test_the_period_is_the_numpy_models(own, others, base, low, high):
    tier = Tier(1 + len(others))
    c = make(tier, 0, None)
    for g, pace in enumerate(others, start=1):
        tier.push_as(g, 1, pace)
    tier.exchange(0, None, c.view)  # the view as the last exchange pulled it
    want = ref.auto_period(base, low, high, own, others)
    assert c.period(base, low, high, own) == want


def test_a_finished_groups_pace_is_left_out():
    tier = Tier(2)
    c = make(tier, 0, None)
    tier.push_as(1, DONE, 0.001)
    tier.exchange(0, None, c.view)
    assert c.period(8, 1, 8, 0.01) == 8
