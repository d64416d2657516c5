"""The roster of a shared tier, in process: leases, deaths, rejoins, refusals and the tier's end.

A :class:`hvd_ps.ps.roster.Roster` on loopback is polled by a thread; leaders are
:class:`hvd_ps.ps.roster.Lease` objects (what a group's leader holds from ``hvd_ps.init`` to its
end). A lease whose socket closes without ``leave`` is a death: the roster reports it naming
the group, and a later join of that id is a rejoin told to wait until ps-lite counts the dead
node dead (``dead_after`` + the margin).
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, List

import pytest

from hvd_ps.errors import TierError, TopologyError
from hvd_ps.ps import roster

DEAD_AFTER = 3
#: the tier's secret (the roster and its leaders hold it)
KEY = b"0123456789abcdef0123456789abcdef"


class Running:
    def __init__(self, total: int, timeout: float = 60.0) -> None:
        self.lines: List[str] = []
        self.roster = roster.Roster("127.0.0.1", total, DEAD_AFTER, timeout, self.lines.append, KEY)
        host, port = self.roster.address.split(":")
        self.address = (host, int(port))
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop:
            self.roster.poll(0.02)

    def lease(self, gid: int, total: int = 0, key: bytes = KEY) -> roster.Lease:
        return roster.Lease(self.address, gid, total or self.roster.total, 10.0, key)

    def until(self, what, limit: float = 5.0) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if what():
                return
            time.sleep(0.02)
        pytest.fail(f"roster lines so far: {self.lines}")


@pytest.fixture
def tier() -> Iterator[Running]:
    r = Running(3)
    yield r
    r.stop = True
    r.thread.join(timeout=5)
    r.roster.close()


def test_a_clean_run_ends_the_tier_with_0(tier: Running) -> None:
    leases = [tier.lease(g) for g in range(3)]
    assert [x.rejoin for x in leases] == [False] * 3
    assert tier.roster.finished() is None
    leases[0].report_key(0, "hvd_ps1.float32.0", 18, "float32")
    for x in leases[:2]:
        x.leave()
    tier.until(lambda: tier.roster.groups[1].state == "left")
    assert tier.roster.finished() is None  # group 2 still trains
    leases[2].leave()
    tier.until(lambda: tier.roster.finished() is not None)
    assert tier.roster.finished() == (0, "all 3 groups have left")
    assert tier.lines == []  # nothing to report


def test_a_death_is_reported_and_the_group_rejoins_after_the_heartbeat_timeout(
    tier: Running,
) -> None:
    leases = [tier.lease(g) for g in range(3)]
    leases[0].report_key(0, "hvd_ps1.float32.0", 18, "float32")
    leases[2].sock.close()  # the process died: no leave
    tier.until(lambda: any("group 2 died" in ln for ln in tier.lines))
    assert leases[1].live_groups(5.0) == {0, 1}  # the dead group stops counting
    (line,) = tier.lines
    assert line.startswith("group 2 died: its leader (pid ")
    assert "keeps serving the other groups ([0, 1])" in line
    assert "HVD_PS_GROUP_OFFSET as before" in line
    again = tier.lease(2)
    assert again.rejoin
    assert DEAD_AFTER < again.wait <= DEAD_AFTER + roster.MARGIN
    assert again.keys == {"0": ["hvd_ps1.float32.0", 18, "float32"]}
    again.check_key(0, "hvd_ps1.float32.0", 18, "float32")
    with pytest.raises(TierError, match=r"its PS key 0 is hvd_ps1\.float32\.0 \(20 float32"):
        again.check_key(0, "hvd_ps1.float32.0", 20, "float32")
    with pytest.raises(TierError, match="where the tier has no such key"):
        again.check_key(1, "hvd_ps1.float32.1", 4, "float32")
    assert "group 2 rejoins the tier (it had died); the others go on" in tier.lines[-1]
    assert leases[0].live_groups(5.0) == {0, 1, 2}  # what a leader held back asks
    again.sock.close()  # dies again, and comes back again: no limit on rejoins
    tier.until(lambda: tier.roster.groups[2].state == "dead")
    assert tier.lease(2).rejoin
    assert tier.roster.recoveries == 2


def test_after_the_start_a_live_id_or_another_total_is_refused(tier: Running) -> None:
    leases = [tier.lease(g) for g in range(3)]
    with pytest.raises(TopologyError, match="global group id 1 is taken by a live leader"):
        tier.lease(1)
    leases[1].sock.close()
    tier.until(lambda: tier.roster.groups[1].state == "dead")
    with pytest.raises(TopologyError, match="give every job HVD_PS_TOTAL_GROUPS=3"):
        tier.lease(1, total=4)
    with pytest.raises(TopologyError, match="global group id 5 is not one of 0..2"):
        tier.lease(5)
    assert leases[0].rejoin is False


def test_at_the_start_duplicate_ids_pass_so_the_claims_refuse_every_job(tier: Running) -> None:
    # refusing one job here would leave the others waiting in ps-lite's start
    first, second = tier.lease(0), tier.lease(0)
    assert (first.rejoin, second.rejoin) == (False, False)
    first.sock.close()
    time.sleep(0.3)
    assert tier.lines == []  # another lease of id 0 is still held
    second.sock.close()
    tier.until(lambda: tier.lines)
    assert tier.lines[0].startswith("group 0 died")


def test_a_dead_group_that_never_comes_back_ends_the_tier_non_zero() -> None:
    r = Running(2, timeout=0.5)
    try:
        a, b = r.lease(0), r.lease(1)
        b.sock.close()
        r.until(lambda: r.roster.groups[1].state == "dead")
        a.leave()
        r.until(lambda: r.roster.finished() is not None)
        code, why = r.roster.finished()  # type: ignore[misc]
        assert code == 1
        assert why.startswith("group(s) [1] died and did not rejoin within HVD_PS_TIMEOUT")
    finally:
        r.stop = True
        r.thread.join(timeout=5)
        r.roster.close()


def test_an_unreachable_roster_is_a_tier_error() -> None:
    with pytest.raises(TierError, match="could not join the PS tier's roster at 127.0.0.1:1"):
        roster.Lease(("127.0.0.1", 1), 0, 1, 2.0, KEY)


def test_in_sync_mode_a_death_says_the_others_fail_and_no_rejoin_is_granted(
    tier: Running,
) -> None:
    leases = [tier.lease(g) for g in range(3)]
    for x in leases:
        x.report_mode("sync")
    time.sleep(0.2)
    leases[0].sock.close()
    tier.until(lambda: tier.lines)
    assert "group 0 died" in tier.lines[0]
    assert "train in sync mode, whose rounds need every group" in tier.lines[0]
    with pytest.raises(TopologyError, match="global group id 0 cannot rejoin: The groups of"):
        tier.lease(0)
    assert tier.roster.recoveries == 0


# -- strangers: peers that do not hold the tier's secret ------------------------------------


def _stranger(tier: Running, say: bytes, read: bool = True) -> List[dict]:
    """A raw connection that sends ``say``; what it heard until the roster closed it."""
    import json
    import socket

    with socket.create_connection(tier.address, timeout=10) as s:
        s.sendall(say)
        heard = b""
        while read:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:  # (closed with our bytes unread: what came is all)
                break
            if not chunk:
                break
            heard += chunk
    return [json.loads(line) for line in heard.splitlines()]


def _states(tier: Running) -> dict:
    return {g: (x.state, x.joins, x.live) for g, x in tier.roster.groups.items()}


def test_a_stranger_changes_nothing_and_hears_nothing_about_the_job(tier: Running) -> None:
    """Without the secret: a plain join (the attack that squatted an id), a forged proof, a
    line too long, and a wrong secret through a real lease are each refused; the roster's
    groups, keys and modes stay as they were, and the stranger hears a nonce and the refusal,
    no pid, host, group or key."""
    from hvd_ps import authentication

    leases = [tier.lease(0)]
    leases[0].report_key(3, "w", 10, "float32")
    leases[0].report_mode("async")
    tier.until(lambda: tier.roster.keys and tier.roster.modes)
    before = (_states(tier), dict(tier.roster.keys), set(tier.roster.modes))
    refusal = [{"error": authentication.REFUSED}]
    attempts = [
        b'{"join": 1, "total": 3, "pid": 1, "host": "x"}\n',
        b'{"nonce": "' + b"00" * 16 + b'", "proof": "' + b"ab" * 32 + b'"}\n',
        b"x" * 100_000,  # no newline: refused once past the handshake's limit
        b'{"leave": 0}\n{"live": 1}\n{"key": 9, "name": "evil"}\n',
    ]
    for say in attempts:
        heard = _stranger(tier, say)
        assert heard and set(heard[0]) == {"hello", "nonce"}, heard
        assert heard[1:] in ([], refusal), heard  # (the refusal may be lost to a reset)
    with pytest.raises(TierError, match="does not hold the tier's secret.*HVD_PS_SECRET_FILE"):
        tier.lease(1, key=b"another secret of sixteen+ bytes")
    tier.until(lambda: tier.roster.refused == len(attempts) + 1)
    assert (_states(tier), dict(tier.roster.keys), set(tier.roster.modes)) == before
    assert len(tier.lines) == 1 and "refused a connection" in tier.lines[0]  # once
    assert tier.lease(1).rejoin is False  # the real leaders still join


def test_silent_or_surplus_connections_cannot_stall_the_roster(tier: Running, monkeypatch) -> None:
    """Connections that never speak are dropped after PROOF_TIME; past MAX_PEERS a new one is
    closed at once; a leader that joins meanwhile is answered all the same."""
    import socket

    monkeypatch.setattr(tier.roster.gate, "proof_time", 0.5)
    monkeypatch.setattr(tier.roster.gate, "max_peers", 4)
    idle = [socket.create_connection(tier.address, timeout=10) for _ in range(4)]
    tier.until(lambda: len(tier.roster.gate.peers) == 4)
    surplus = _stranger(tier, b"")  # the fifth: closed without a word
    assert surplus == [] and tier.roster.refused >= 1
    tier.until(lambda: not tier.roster.gate.peers, limit=5.0)  # the silent four: dropped
    assert tier.roster.refused == 5
    start = time.monotonic()
    lease = tier.lease(0)
    assert time.monotonic() - start < 4.0 and _states(tier)[0] == ("live", 1, 1)
    for s in idle:
        s.close()
    lease.leave()


def test_a_tampered_or_replayed_line_on_a_lease_is_dropped_and_the_lease_goes_on(
    tier: Running,
) -> None:
    """Lines injected into a leader's connection (a forged ``leave``, a replay of its own
    sealed ``live`` request) are dropped and counted: the group stays live, and its next real
    request is answered."""
    lease = tier.lease(0)
    sealed = lease.channel.session.seal({"live": 1})
    lease.sock.sendall(sealed)
    assert lease.channel.receive(5.0) == {"live": [0]}
    lease.sock.sendall(sealed)  # the same line again: its number is spent
    lease.sock.sendall(b"0" * 64 + b' {"leave": 0}\n')  # a forged seal
    lease.sock.sendall(b'{"leave": 0}\n')  # no seal at all
    tier.until(lambda: tier.roster.dropped == 3)
    assert _states(tier)[0] == ("live", 1, 1)
    assert lease.live_groups(5.0) == {0}


def test_a_joined_leader_announces_its_node_and_a_stranger_cannot() -> None:
    """A leader's ps-lite node reaches the scheduler's announcements only through its lease;
    the same message from a peer that has not joined is dropped."""
    announced: list = []
    r = Running(2)
    r.roster.announce = lambda role, host, port: announced.append((role, host, port))
    try:
        lease = r.lease(0)
        lease.announce("127.0.0.1", 7001, 5.0)
        assert announced == [("worker", "127.0.0.1", 7001)]
        with pytest.raises(TierError, match="refused group 0's node: not a ps-lite node"):
            lease.announce("127.0.0.1", 0, 5.0)
        import socket

        from hvd_ps import authentication

        sock = socket.create_connection(r.address, timeout=5)  # proven, never joined
        channel = authentication.connect(sock, KEY, 5.0)
        channel.send({"node": {"host": "127.0.0.1", "port": 7666}})
        r.until(lambda: r.roster.dropped == 1)
        assert announced == [("worker", "127.0.0.1", 7001)]
        sock.close()
    finally:
        r.stop = True
        r.thread.join(timeout=5)
        r.roster.close()
