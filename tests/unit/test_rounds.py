"""The servers' rounds of a quorum (hvd_ps.ps.protocol.Rounds): which reports a round holds,
when it closes (quorum, grace, every group, groups done), the auto grace, what it refuses."""

from __future__ import annotations

import re

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.errors import ConfigError
from hvd_ps.ps import protocol, rules


class Tier:
    """One rounds key as a server holds it, on a clock the test moves."""

    def __init__(self, groups, quorum, grace=-1.0, window=protocol.ROUND_WINDOW):
        self.record = protocol.Rounds(groups, quorum, grace, window)
        self.rule = rules.make(self.record, 7, lambda key: None)
        self.t = 100.0
        self.rule.now = lambda: self.t
        self.w = mx.nd.zeros((self.record.size,))

    def push(self, kind, group, seq=0):
        row = np.zeros(self.record.size, np.float32)
        row[:3] = (kind, group, seq)
        self.rule.update(mx.nd.array(row), self.w)
        return self.w.asnumpy()

    def report(self, group, seq):
        return self.push(protocol.ROUND_REPORT, group, seq)

    def poll(self, group=0):
        return self.push(protocol.ROUND_POLL, group)

    def rounds(self):
        closed, _, members = rules.read_rounds(
            self.w.asnumpy(), self.record.groups, self.record.window
        )
        return closed, members


def test_a_round_closes_at_its_quorum_once_the_grace_passed_and_a_late_report_joins_the_next():
    tier = Tier(groups=3, quorum=2, grace=0.5)
    tier.report(0, 1)
    tier.t += 10.0  # one report is no quorum, however long
    view = tier.report(1, 1)
    assert view[0] == 0 and list(view[4:7]) == [1, 1, 0]  # placed in round 1, still open
    assert list(view[7:10]) == [1, 1, 0]  # the open round's reports
    assert list(view[10:13]) == [1, 1, 0]  # each group's last report
    tier.t += 0.49
    assert tier.poll()[0] == 0
    tier.t += 0.02
    view = tier.poll()
    assert tier.rounds() == (1, {1: {0: 1, 1: 1}})
    assert view[2] == 0.5  # the grace in use
    view = tier.report(2, 1)  # late: joins round 2
    assert view[4 + 2] == 2 and view[0] == 1
    tier.report(0, 2)
    tier.report(1, 2)  # every group: closes at once
    assert tier.rounds() == (2, {1: {0: 1, 1: 1}, 2: {0: 2, 1: 2, 2: 1}})


def test_grace_zero_closes_at_the_quorum_and_done_groups_are_not_waited_for():
    tier = Tier(groups=3, quorum=3, grace=0.0)
    tier.report(0, 1)
    tier.report(1, 1)
    assert tier.rounds()[0] == 0  # quorum 3: waits for group 2
    tier.push(protocol.ROUND_DONE, 2)  # group 2 finished: 2 live groups, both reported
    assert tier.rounds() == (1, {1: {0: 1, 1: 1}})
    tier.push(protocol.ROUND_DONE, 1)
    tier.report(0, 2)  # the last live group alone
    assert tier.rounds()[1][2] == {0: 2}
    with pytest.raises(ValueError, match="group 1 reported exchange 2 after it finished"):
        tier.report(1, 2)


def test_the_auto_grace_is_a_tenth_of_the_median_interval_between_closes():
    tier = Tier(groups=2, quorum=1)
    for k, gap in enumerate([2.0, 4.0, 3.0], start=1):
        tier.t += gap
        tier.report(0, k)
        assert tier.rounds()[0] == k - 1  # every group until two closes are known ...
        tier.report(1, k)
        assert tier.rounds()[0] == k
    assert tier.rule.grace() == pytest.approx(0.1 * 3.5)  # median of the gaps 4, 3
    tier.report(0, 4)
    tier.t += 0.3
    assert tier.poll()[0] == 3
    tier.t += 0.06
    assert tier.poll()[0] == 4 and tier.rounds()[1][4] == {0: 4}


def test_the_ring_keeps_the_last_window_rounds():
    tier = Tier(groups=1, quorum=1, window=3)
    for k in range(1, 6):
        tier.report(0, k)
    closed, members = tier.rounds()
    assert closed == 5 and members == {3: {0: 3}, 4: {0: 4}, 5: {0: 5}}


def test_a_flush_closes_the_open_round_whoever_reported_and_an_empty_one_stays():
    tier = Tier(groups=3, quorum=2, grace=60.0)
    tier.report(0, 1)
    tier.report(1, 1)
    tier.report(2, 1)
    tier.report(2, 2)  # group 2 alone in round 2, far from its quorum and grace
    view = tier.push(protocol.ROUND_FLUSH, 0)
    assert view[0] == 2 and tier.rounds()[1][2] == {2: 2}
    assert tier.push(protocol.ROUND_FLUSH, 1)[0] == 2  # nothing open: no round of none
    tier.report(0, 2)
    tier.report(1, 2)
    tier.report(2, 3)
    assert tier.rounds()[1][3] == {0: 2, 1: 2, 2: 3}


def test_a_resume_sets_a_groups_last_exchange_once_before_it_reports():
    tier = Tier(groups=2, quorum=1, grace=60.0)
    tier.push(protocol.ROUND_RESUME, 0, 6)
    tier.push(protocol.ROUND_RESUME, 1, 6)
    with pytest.raises(ValueError, match="reported exchange 6, expected 7"):
        tier.report(0, 6)
    tier.report(0, 7)
    view = tier.report(1, 7)
    assert view[0] == 1 and tier.rounds()[1][1] == {0: 7, 1: 7}
    with pytest.raises(ValueError, match="group 1 resumed at exchange 3 after it reported "):
        tier.push(protocol.ROUND_RESUME, 1, 3)


@pytest.mark.parametrize(
    "row, message",
    [
        ((1, 0, 2), "reported exchange 2, expected 1"),
        ((1, 5, 1), "group 5 is not one of the 2 groups"),
        ((7, 0, 1), "a rounds push of kind 7"),
        ((1, 0.5, 1), "not whole numbers"),
        ((np.nan, 0, 1), "not whole numbers"),
    ],
)
def test_a_bad_push_is_refused(row, message):
    tier = Tier(groups=2, quorum=1)
    with pytest.raises(ValueError, match=message):
        tier.push(*row)


def test_a_second_report_in_one_round_and_a_push_of_the_wrong_size_are_refused():
    tier = Tier(groups=2, quorum=2)
    tier.report(0, 1)
    with pytest.raises(ValueError, match="group 0 reported twice in round 1"):
        tier.report(0, 2)
    with pytest.raises(ValueError, match="a rounds push of 3 elements"):
        tier.rule.update(mx.nd.zeros((3,)), tier.w)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: protocol.Rounds(3, 4), "quorum must be an integer with 1 <= quorum < groups + 1"),
        (lambda: protocol.Rounds(3, 0), "quorum must be an integer"),
        (lambda: protocol.Rounds(3, 2, grace=-0.5), "grace must be"),
        (lambda: protocol.WireCommit((), 3), "bases=() must be a non-empty list"),
    ],
)
def test_the_records_check_their_fields(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_a_rounds_record_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="of 5 elements"):
        rules.read_rounds(np.zeros(5), 2, 4)
    bad = np.zeros(protocol.rounds_size(2, 4), np.float32)
    bad[:2] = (3, 1)  # rounds 1..3, none with members
    with pytest.raises(ValueError, match="round 1 has no members"):
        rules.read_rounds(bad, 2, 4)


class FakeClient:
    """Leaders' PS clients sharing one server's rounds key in-process (what
    :class:`hvd_ps.ps.rounds.Rounds` calls of a client)."""

    class cfg:
        class settings:
            timeout = 0.5

    def __init__(self, tier: Tier):
        self.tier = tier
        self.pushes = 0  # round trips to the rounds key

    def register(self, name, initial, record, out=None, server=None):
        assert record == self.tier.record and server == 0
        return 7

    def exchange(self, key, push, pull, wait=True):
        self.pushes += 1
        self.tier.rule.update(push, self.tier.w)
        pull[:] = self.tier.w


def test_a_leader_waits_for_its_round_unless_a_group_is_ahead_and_names_the_missing_groups():
    from hvd_ps.errors import TierError
    from hvd_ps.ps.rounds import Rounds

    tier = Tier(groups=3, quorum=2, grace=1.0)  # (the tier's clock moves only when told)
    client = FakeClient(tier)
    leader = Rounds(client, "r", 2, tier.record)  # group 2's; the others by hand
    commits = []

    def commit(view, answer):
        commits.append((int(view[0]), answer))
        return [int(view[0]), int(view[0])]  # two shards, each with the rounds closed

    leader.commit = commit
    tier.report(1, 1)
    tier.report(0, 1)
    leader.close(1, "exchange 1")  # every group: round 1 closes at its report, no poll
    assert (
        commits[-1] == (1, True) and list(leader.history) == [(1, 1, (1, 1))] and leader.late == 0
    )
    assert client.pushes == 1
    tier.report(0, 2)
    tier.report(1, 2)
    tier.t += 2.0
    tier.poll()  # round 2 closes without group 2
    tier.report(0, 3)  # round 3 opens with group 0
    leader.before_push(2, "exchange 2")  # its previous round was applied at its close:
    assert commits[-1] == (1, True) and client.pushes == 1  # nothing to wait for or apply
    leader.close(2, "exchange 2")  # round 3 has its quorum but not its grace; group 1
    assert leader.history[-1] == (2, 3, (2, 2)) and leader.late == 1  # is ahead: no wait
    assert commits[-1] == (2, True)
    tier.report(1, 3)  # round 3: every group, closed
    leader.before_push(3, "exchange 3")  # its late push's round: one poll, then applied
    assert commits[-1] == (3, False) and client.pushes == 3  # (exchange 2: its report only)
    tier.report(1, 4)
    tier.report(0, 4)
    leader.close(3, "exchange 3")  # round 4 with every group: closed at once
    assert leader.history[-1] == (3, 4, (4, 4)) and leader.late == 1
    leader.finish()
    leader.finish()  # once
    assert tier.rule.done == {2} and commits[-1] == (4, False)

    tier = Tier(groups=3, quorum=3, grace=0.0)
    leader = Rounds(FakeClient(tier), "r", 2, tier.record)
    leader.commit = lambda view, answer: []
    tier.report(1, 1)
    message = (
        r"exchange 1: group 2's exchange 1 waited 0.5 s \(HVD_PS_TIMEOUT\) for round 1 to "
        r"close: it needs 3 group\(s\), and group\(s\) 0 did not report"
    )
    with pytest.raises(TierError, match=message):
        leader.close(1, "exchange 1")
