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


# -- what strangers send ---------------------------------------------------------------------


def test_malformed_messages_are_dropped_and_counted_never_fatal(started) -> None:
    """The attack that ended the scheduler (one frame that is not protobuf: ``protobuf wire
    type 7``, exit 1) and its relatives: each dropped and counted, nothing sent, nothing
    changed."""
    before = dict(started.nodes)
    started.sent.clear()
    junk = [
        [b"id", b"\x0f"],  # wire type 7
        [b"id", b"\x08"],  # a varint cut short
        [b"id", b"\x1a\x05\xff\xfe"],  # a length past the end, then a bad varint
        [b"only an identity"],
        [b"id", sch._field(3, sch._field(1, sch.ADD_NODE) + sch._field(2, sch._field(3, b"\xff")))],
    ]
    for frames in junk:
        started.receive(frames)
    assert started.dropped == len(junk) and started.sent == [] and started.nodes == before


@pytest.mark.parametrize(
    "node",
    [
        sch.Node(sch.SCHEDULER, "127.0.0.1", 7300),
        sch.Node(sch.WORKER, "127.0.0.1", 0),
        sch.Node(sch.WORKER, "127.0.0.1", 70000),
        sch.Node(sch.WORKER, "", 7300),
        sch.Node(sch.WORKER, "a b;rm", 7300),
    ],
)
def test_a_registration_no_ps_lite_node_could_send_is_dropped(node) -> None:
    s = Recorder("127.0.0.1", 9000, num_servers=1, num_workers=1, dead_after=0.2)
    s.receive([b"x", sch.Meta(sch.ADD_NODE, [node]).encode()])
    assert s.pending == [] and s.dropped == 1


def test_only_registered_members_count_toward_a_barrier_each_once(started) -> None:
    """Requests from a sender that is not registered, from a node outside the group, or the
    same node again do not count: the workers' barrier is answered when ps9 and ps11 asked."""
    started.sent.clear()
    ask = sch.Meta(sch.BARRIER, barrier_group=sch.WORKER_GROUP, request=True)
    for who in (b"\x00stranger", b"ps8", b"ps77", b"ps9", b"ps9"):
        started.receive([who, ask.encode()])
    assert started.sent == [] and started.dropped == 4
    started.receive([b"ps11", ask.encode()])
    assert sorted(i for i, _ in started.sent) == [9, 11]


def test_heartbeats_of_unregistered_senders_are_not_answered(started) -> None:
    started.sent.clear()
    started.receive([b"ps77", sch.Meta(sch.HEARTBEAT, [started.me]).encode()])
    started.receive([b"\x00x", sch.Meta(sch.HEARTBEAT, [started.me]).encode()])
    assert started.sent == [] and 77 not in started.heartbeats and started.dropped == 2


def test_the_real_socket_refuses_an_oversized_message_and_serves_on() -> None:
    """On loopback: garbage and a message past MAX_MESSAGE arrive first; the scheduler keeps
    running and starts the tier when its one server and one worker register."""
    import threading

    import zmq

    from hvd_ps import addresses

    port = addresses.free_port("127.0.0.1")
    s = sch.Scheduler("127.0.0.1", port, num_servers=1, num_workers=1, dead_after=5.0)
    t = threading.Thread(target=s.run, kwargs={"stop_after": 3.0}, daemon=True)
    t.start()
    ctx = zmq.Context()
    try:
        nodes, ports = [], []
        for _ in range(2):
            inbox = ctx.socket(zmq.ROUTER)  # where the scheduler answers this node
            ports.append(inbox.bind_to_random_port("tcp://127.0.0.1"))
            nodes.append(inbox)
        junk = ctx.socket(zmq.DEALER)
        junk.setsockopt(zmq.LINGER, 0)
        junk.connect(f"tcp://127.0.0.1:{port}")
        junk.send(b"\x0f")
        end = time.monotonic() + 2.0
        while s.dropped < 1 and time.monotonic() < end:
            time.sleep(0.01)
        assert s.dropped == 1  # read, dropped, and the scheduler runs on
        junk.close()
        big = ctx.socket(zmq.DEALER)  # (ZeroMQ closes this connection at the message)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(f"tcp://127.0.0.1:{port}")
        big.send(b"\x00" * (sch.MAX_MESSAGE + 1))
        big.close()
        reg = ctx.socket(zmq.DEALER)
        reg.setsockopt(zmq.LINGER, 0)
        reg.connect(f"tcp://127.0.0.1:{port}")
        for role, at in zip((sch.SERVER, sch.WORKER), ports):
            reg.send(sch.Meta(sch.ADD_NODE, [sch.Node(role, "127.0.0.1", at)]).encode())
        for inbox in nodes:
            assert inbox.poll(2000), "the scheduler did not start the tier"
            frames = inbox.recv_multipart()
            got = sch.Meta.decode(frames[-1])
            assert got.cmd == sch.ADD_NODE and {n.id for n in got.nodes} == {1, 8, 9}
        reg.close()
        for inbox in nodes:
            inbox.close(linger=0)
    finally:
        t.join(5)
        s.context.destroy(linger=0)
        ctx.term()
    assert s.dropped == 1  # the junk; the oversized message never reached it


# -- announced nodes -------------------------------------------------------------------------


def _gated(**kw) -> Recorder:
    return Recorder("127.0.0.1", 9000, announced_roles=(sch.SERVER, sch.WORKER), **kw)


def test_a_node_registers_only_once_announced_and_each_announcement_admits_one() -> None:
    """The attack 'join and be served': a stranger's registration before the start takes no
    place; the announced nodes start the tier whichever arrives first, the registration or
    its announcement; a second registration of an announced address is not admitted."""
    s = _gated(num_servers=1, num_workers=1, dead_after=0.2)
    _register(s, sch.WORKER, 7666)  # a stranger: never announced
    _register(s, sch.WORKER, 7001)  # a leader whose announcement is on its way
    s.announce_line(b'{"role": "server", "host": "127.0.0.1", "port": 7000}')
    _register(s, sch.SERVER, 7000)
    assert s.pending == [sch.Node(sch.SERVER, "127.0.0.1", 7000)] and s.sent == []
    s.announce(sch.WORKER, "127.0.0.1", 7001)  # the leader's arrives: the tier starts
    assert {n.port for n in s.nodes.values()} == {7000, 7001}
    assert {i for i, _ in s.sent} == {8, 9}
    s.announce_line(b"not json")  # from the process that started us: logged, ignored
    s.announce_line(b'{"role": "scheduler", "host": "h", "port": 1}')


def test_an_unannounced_registration_is_dropped_after_its_wait(monkeypatch) -> None:
    monkeypatch.setattr(sch, "UNANNOUNCED_WAIT", 0.05)
    s = _gated(num_servers=1, num_workers=1, dead_after=0.2)
    _register(s, sch.WORKER, 7666)
    time.sleep(0.1)
    s._expire()
    assert s.waiting == [] and s.dropped == 1
    s.announce(sch.WORKER, "127.0.0.1", 7666)  # too late: it must register again
    assert s.pending == []


def test_a_recovery_needs_an_announcement_too() -> None:
    """After the start a registration takes a dead node's id only once announced: a stranger
    cannot take the place of a group that died (the second attack on a dead node's id)."""
    s = _gated(num_servers=1, num_workers=1, dead_after=0.05)
    for role, port in ((sch.SERVER, 7000), (sch.WORKER, 7001)):
        s.announce(role, "127.0.0.1", port)
        _register(s, role, port)
    time.sleep(0.1)  # both silent: dead
    _register(s, sch.WORKER, 7666)
    assert s.recoveries == 0 and s.nodes[9].port == 7001
    s.announce(sch.WORKER, "127.0.0.1", 7002)
    _register(s, sch.WORKER, 7002)
    assert s.recoveries == 1 and s.nodes[9].port == 7002
