"""hvd_ps's ps-lite scheduler, in process: its protobuf, and what it answers to whom.

The messages are ps-lite's ``PBMeta`` (src/meta.proto); a test compares bytes with what
protobuf itself writes for the same fields (hand-derived here: field key, then value). The
scheduler's decisions are checked with its sockets replaced by a recorder: ids in registration
order, the node list to everyone at the start, a barrier answered only when the whole group
asked, and any number of recoveries, each taking a dead node's id (real ps-lite nodes against
it: tests/jobs/test_rejoin.py).
"""

from __future__ import annotations

import time
from typing import List, Tuple

import pytest

from hvd_ps.ps import scheduler as sch


def test_varints_and_fields_match_protobuf() -> None:
    assert sch._varint(1) == b"\x01"
    assert sch._varint(300) == b"\xac\x02"
    assert sch._varint(-1) == b"\xff" * 9 + b"\x01"  # int32 -1: ten bytes
    assert sch._field(1, 150) == b"\x08\x96\x01"
    assert sch._field(3, "ab") == b"\x1a\x02ab"
    assert sch._fields(b"\x08\x96\x01\x1a\x02ab") == [(1, 150), (3, b"ab")]
    assert sch._fields(sch._field(2, -5)) == [(2, -5)]


def test_a_meta_survives_its_encoding() -> None:
    nodes = [sch.Node(sch.WORKER, "127.0.0.1", 4000, 9, True, 0), sch.Node(sch.SCHEDULER, "h", 1)]
    meta = sch.Meta(sch.BARRIER, nodes, barrier_group=7, request=True, app_id=0, customer_id=3)
    assert sch.Meta.decode(meta.encode()) == meta
    # a node without an id, as a registering node sends it, decodes to ps-lite's kEmpty
    raw = sch._field(1, sch.SERVER) + sch._field(3, "10.0.0.2") + sch._field(4, 5000)
    assert sch.Node.decode(raw) == sch.Node(sch.SERVER, "10.0.0.2", 5000, sch.EMPTY)


class Recorder(sch.Scheduler):
    """The scheduler's decisions, without sockets."""

    def __post_init__(self) -> None:
        self.sent: List[Tuple[int, sch.Meta]] = []
        self.me = sch.Node(sch.SCHEDULER, self.host, self.port, sch.SCHEDULER_ID)

    def _connect(self, node: sch.Node) -> None:
        pass

    def _send(self, node_id: int, meta: sch.Meta) -> None:
        self.sent.append((node_id, meta))


def _register(s: Recorder, role: int, port: int) -> None:
    s.handle(b"\x00random", sch.Meta(sch.ADD_NODE, [sch.Node(role, "127.0.0.1", port)]))


@pytest.fixture
def started() -> Recorder:
    s = Recorder("127.0.0.1", 9000, num_servers=1, num_workers=2, dead_after=0.2)
    _register(s, sch.WORKER, 7001)
    _register(s, sch.SERVER, 7000)
    assert s.sent == []  # nothing before every node registered
    _register(s, sch.WORKER, 7002)
    return s


def test_the_start_gives_ids_in_registration_order_and_the_list_to_all(started) -> None:
    ids = {n.port: n.id for n in started.nodes.values()}
    assert ids == {7001: 9, 7000: 8, 7002: 11}  # worker ranks 0, 1: ids 9, 11; server 8
    assert sorted(i for i, _ in started.sent) == [8, 9, 11]
    for _, meta in started.sent:
        assert meta.cmd == sch.ADD_NODE
        assert {n.id for n in meta.nodes} == {1, 8, 9, 11}  # and the scheduler itself


def test_a_barrier_is_answered_once_the_whole_group_asked(started) -> None:
    started.sent.clear()
    ask = sch.Meta(sch.BARRIER, barrier_group=sch.WORKER_GROUP, request=True, customer_id=0)
    started.handle(b"ps9", ask)
    assert started.sent == []
    started.handle(b"ps11", ask)
    assert [(i, m.cmd, m.request) for i, m in started.sent] == [
        (9, sch.BARRIER, False),
        (11, sch.BARRIER, False),
    ]
    started.sent.clear()
    everyone = sch.Meta(sch.BARRIER, barrier_group=7, request=True)
    for who in (b"ps8", b"ps9", b"ps11"):
        started.handle(who, everyone)
    assert sorted(i for i, _ in started.sent) == [8, 9, 11]


def test_heartbeats_are_acknowledged(started) -> None:
    started.sent.clear()
    started.handle(b"ps9", sch.Meta(sch.HEARTBEAT, [started.nodes[9]]))
    assert [(i, m.cmd) for i, m in started.sent] == [(9, sch.HEARTBEAT)]


def test_recoveries_take_dead_ids_as_often_as_nodes_die(started) -> None:
    for round_ in range(3):  # ps-lite's own scheduler aborts at the second
        time.sleep(0.3)
        for i in (8, 9):  # the server and worker 9 stay alive
            started.handle(f"ps{i}".encode(), sch.Meta(sch.HEARTBEAT, [started.nodes[i]]))
        started.sent.clear()
        _register(started, sch.WORKER, 7100 + round_)
        new = started.nodes[11]
        assert (new.port, new.is_recovery) == (7100 + round_, True)
        to_new = [m for i, m in started.sent if i == 11]
        assert len(to_new) == 1 and {n.id for n in to_new[0].nodes} == {1, 8, 9, 11}
        to_others = sorted(i for i, m in started.sent if i != 11)
        assert to_others == [8, 9]
        assert all(m.nodes == [new] for i, m in started.sent if i != 11)
    assert started.recoveries == 3


def test_a_registration_with_no_dead_node_is_ignored(started) -> None:
    for i in (8, 9, 11):
        started.heartbeats[i] = time.monotonic()
    started.sent.clear()
    _register(started, sch.WORKER, 7200)
    assert started.sent == [] and started.recoveries == 0
