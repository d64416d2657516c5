"""A ps-lite scheduler of hvd_ps's own, for tiers whose groups may die and rejoin many times.

ps-lite's scheduler (the one in MXNet 1.9.1) can hand a dead node's id to a node that
registers later, but it keeps the nodes it recovered in one list that it never clears and
checks at each recovery that the list holds exactly one: the second recovery in its life
aborts it (``Check failed: recovery_nodes->control.node.size() == 1 (2 vs. 1)``). This module
speaks the same protocol (ZeroMQ, one protobuf ``PBMeta`` per message, ps-lite's
``src/meta.proto``) and does the scheduler's whole job, which is small, with that list cleared
at every recovery:

* **registration**: every server and worker sends ``ADD_NODE`` with its address; once all
  ``DMLC_NUM_SERVER + DMLC_NUM_WORKER`` have, each gets its id (server rank ``r``: ``8 + 2r``,
  worker rank ``r``: ``9 + 2r``, ranks in registration order) and the list of every node;
* **recovery**: a node that registers later takes the id of a dead node of its role (no
  heartbeat for ``PS_HEARTBEAT_TIMEOUT`` s), marked ``is_recovery`` (MXNet's worker then skips
  its start and ``kv.init`` barriers); it gets every node, every live node gets it;
* **barriers**: a request for a group of nodes (scheduler 1, servers 2, workers 4) is answered
  to the whole group once every node of it has asked (this scheduler counts as having asked);
* **heartbeats**: recorded, and acknowledged as ps-lite does.

``hvdps-run --servers-only`` runs it (``python -m hvd_ps.server`` with ``DMLC_ROLE=scheduler``
and ``HVD_PS_OWN_SCHEDULER=1``); the embedded tier and ``hvdps-run``'s job mode keep ps-lite's.
It runs until it is stopped: the tier ends it when every group has left.

Whatever arrives is untrusted, and nothing a peer sends stops it: a message longer than
:data:`MAX_MESSAGE` is refused by ZeroMQ, and a message that does not decode, a registration
with an address or role no ps-lite node has, a barrier request or heartbeat from a sender that
is not a registered node (of that barrier's group), a second request of one node for the same
barrier, or a command a scheduler does not take is dropped and counted (:attr:`dropped`; the
first is logged). ps-lite's sender ids are the peer's own claim (its ZeroMQ identity): a peer
that claims a registered node's id is not detected here.

**Announced nodes** (``announced_roles``; ``hvdps-run --servers-only`` sets server and
worker): a registration of such a role counts only once the process that started this
scheduler announced that node's address (:meth:`Scheduler.announce`, one JSON line per node on
this process's standard input: ``{"role": "worker", "host": H, "port": P}``): hvdps-run for its
servers, and for each leader once it proved on its roster lease that it holds the tier's
secret. An announcement admits one registration. A registration that is not announced waits
:data:`UNANNOUNCED_WAIT` seconds for its announcement (the two travel different roads), then is
dropped, so a stranger that knows the tier's address but not its secret is never registered,
before the start or in a dead node's place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Set, Tuple, Union

log = logging.getLogger("hvd_ps.ps.scheduler")

SERVER, WORKER, SCHEDULER = 0, 1, 2  # Node::Role
TERMINATE, ADD_NODE, BARRIER, HEARTBEAT = 1, 2, 3, 5  # Control::Command
SCHEDULER_ID, SERVER_GROUP, WORKER_GROUP = 1, 2, 4
EMPTY = 2**31 - 1  # ps-lite's kEmpty
#: the longest message the scheduler takes (a node list is ~30 bytes a node)
MAX_MESSAGE = 1 << 20
#: a node's host as ps-lite advertises it: a name or an IPv4/IPv6 address
HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")
#: seconds a registration waits for its node's announcement before it is dropped
UNANNOUNCED_WAIT = 10.0
#: registrations that may wait for their announcement at once (more are dropped)
MAX_WAITING = 256
ROLES = {"server": SERVER, "worker": WORKER}


# -- protobuf (proto2) for the few fields a scheduler reads and writes ---------------------------


def _varint(value: int) -> bytes:
    value &= 2**64 - 1  # negative int32s are ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: Union[int, bool, str, bytes]) -> bytes:
    if isinstance(value, (bytes, str)):
        data = value.encode() if isinstance(value, str) else value
        return _varint(number << 3 | 2) + _varint(len(data)) + data
    return _varint(number << 3) + _varint(int(value))


Value = Union[int, bytes]


def _int(v: Value) -> int:
    return v if isinstance(v, int) else 0


def _bytes(v: Value) -> bytes:
    return v if isinstance(v, bytes) else b""


def _fields(buf: bytes) -> List[Tuple[int, Value]]:
    out: List[Tuple[int, Value]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            v = varint()
            out.append((number, v - 2**64 if v >= 2**63 else v))
        elif wire == 2:
            n = varint()
            out.append((number, buf[i : i + n]))
            i += n
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ValueError(f"protobuf wire type {wire} unexpected")
    return out


@dataclass(frozen=True)
class Node:
    role: int
    hostname: str
    port: int
    id: int = EMPTY
    is_recovery: bool = False
    customer_id: int = 0

    def encode(self) -> bytes:
        return b"".join(
            [_field(2, self.id), _field(1, self.role), _field(4, self.port),
             _field(3, self.hostname), _field(5, self.is_recovery), _field(10, self.customer_id)]
        )  # fmt: skip

    @staticmethod
    def decode(buf: bytes) -> Node:
        f = dict(_fields(buf))
        return Node(
            role=_int(f.get(1, 0)),
            hostname=_bytes(f.get(3, b"")).decode(),
            port=_int(f.get(4, 0)),
            id=_int(f.get(2, EMPTY)),
            is_recovery=bool(f.get(5, 0)),
            customer_id=_int(f.get(10, 0)),
        )


@dataclass
class Meta:
    """The part of ps-lite's ``PBMeta`` a control message uses."""

    cmd: int = 0
    nodes: List[Node] = field(default_factory=list)
    barrier_group: int = 0
    request: bool = False
    app_id: int = 0
    customer_id: int = 0

    def encode(self) -> bytes:
        control = _field(1, self.cmd) + b"".join(_field(2, n.encode()) for n in self.nodes)
        if self.cmd == BARRIER:
            control += _field(3, self.barrier_group)
        return b"".join(
            [_field(3, control), _field(4, self.request), _field(7, self.app_id),
             _field(10, self.customer_id)]
        )  # fmt: skip

    @staticmethod
    def decode(buf: bytes) -> Meta:
        meta = Meta()
        for number, value in _fields(buf):
            if number == 4:
                meta.request = bool(value)
            elif number == 7:
                meta.app_id = _int(value)
            elif number == 10:
                meta.customer_id = _int(value)
            elif number == 3:
                for n, v in _fields(_bytes(value)):
                    if n == 1:
                        meta.cmd = _int(v)
                    elif n == 2:
                        meta.nodes.append(Node.decode(_bytes(v)))
                    elif n == 3:
                        meta.barrier_group = _int(v)
        return meta


# -- the scheduler --------------------------------------------------------------------------------


@dataclass
class Scheduler:
    host: str
    port: int
    num_servers: int
    num_workers: int
    dead_after: float  # PS_HEARTBEAT_TIMEOUT
    nodes: Dict[int, Node] = field(default_factory=dict)  # id -> node, once started
    pending: List[Node] = field(default_factory=list)  # registrations before the start
    heartbeats: Dict[int, float] = field(default_factory=dict)
    barriers: Dict[int, Set[int]] = field(default_factory=dict)  # group -> the ids that asked
    recoveries: int = 0
    dropped: int = 0  # messages dropped (see the module's docstring)
    announced_roles: Tuple[int, ...] = ()  # roles registered only once announced
    announced: Dict[Tuple[int, str, int], int] = field(default_factory=dict)  # -> admissions
    waiting: List[Tuple[float, Node]] = field(default_factory=list)  # (since, registration)

    def __post_init__(self) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        self.receiver = self.context.socket(zmq.ROUTER)
        self.receiver.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.receiver.bind(f"tcp://{self.host}:{self.port}")
        self.senders: Dict[int, object] = {}
        self.me = Node(SCHEDULER, self.host, self.port, SCHEDULER_ID)

    def run(self, stop_after: Optional[float] = None, announcements: Optional[int] = None) -> None:
        """Serve until ``stop_after`` seconds passed (None: until stopped); ``announcements``:
        a file descriptor of JSON lines, each a node to :meth:`announce`."""
        end = None if stop_after is None else time.monotonic() + stop_after
        poller = self.zmq.Poller()
        poller.register(self.receiver, self.zmq.POLLIN)
        if announcements is not None:
            poller.register(announcements, self.zmq.POLLIN)
        pending = b""
        while end is None or time.monotonic() < end:
            ready = dict(poller.poll(200))
            if self.receiver in ready:
                self.receive(self.receiver.recv_multipart())
            if announcements is not None and announcements in ready:
                chunk = os.read(announcements, 65536)
                if not chunk:  # the process that started us is gone (it stops us too)
                    poller.unregister(announcements)
                    announcements = None
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self.announce_line(line)
            self._expire()

    def announce_line(self, line: bytes) -> None:
        """One line of the announcements (from the process that started us)."""
        try:
            msg = json.loads(line)
            role, host, port = ROLES[msg["role"]], str(msg["host"]), int(msg["port"])
        except (ValueError, KeyError, TypeError) as err:
            log.error("an announcement that is not a node (%s): %r", err, line[:200])
            return
        self.announce(role, host, port)

    def announce(self, role: int, host: str, port: int) -> None:
        """A node of ``role`` at ``host:port`` may register (once); one that is waiting is
        registered now."""
        node = (role, host, port)
        self.announced[node] = self.announced.get(node, 0) + 1
        for i, (_, waiting) in enumerate(self.waiting):
            if (waiting.role, waiting.hostname, waiting.port) == node:
                del self.waiting[i]
                self._admit(waiting)
                return

    def _admit(self, node: Node) -> None:
        """Register ``node`` if it needs no announcement or one is left for it; else it
        waits for one."""
        if node.role in self.announced_roles:
            key = (node.role, node.hostname, node.port)
            if not self.announced.get(key):
                if len(self.waiting) >= MAX_WAITING:
                    self._drop(f"a registration of {node.hostname}:{node.port} (too many wait)")
                else:
                    self.waiting.append((time.monotonic(), node))
                return
            self.announced[key] -= 1
        self._add(node)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.waiting and now - self.waiting[0][0] > UNANNOUNCED_WAIT:
            _, node = self.waiting.pop(0)
            self._drop(
                f"a registration of {node.hostname}:{node.port} that nothing announced within "
                f"{UNANNOUNCED_WAIT:g} s (a node that does not hold the tier's secret)"
            )

    def receive(self, frames: List[bytes]) -> None:
        """One message as the ROUTER socket hands it over: the sender's identity, then the
        ``PBMeta`` (data frames after it, which a scheduler never needs)."""
        try:
            if len(frames) < 2:
                raise ValueError("no message frame")
            meta = Meta.decode(frames[1])
        except (ValueError, IndexError) as err:  # (a truncated varint: IndexError)
            self._drop(f"a message that is not a ps-lite control message ({err})")
            return
        try:
            self.handle(frames[0], meta)
        except Exception as err:  # the last line: a message never stops the scheduler
            self._drop(f"a message whose handling failed ({type(err).__name__}: {err})")

    def handle(self, identity: bytes, meta: Meta) -> None:
        sender = _node_id(identity)
        if meta.cmd == ADD_NODE and meta.nodes:
            why = _invalid(meta.nodes[0])
            if why:
                self._drop(f"a registration of {why}")
            else:
                self._admit(meta.nodes[0])
        elif meta.cmd == BARRIER and meta.request:
            self._barrier(sender, meta)
        elif meta.cmd == HEARTBEAT and sender in self.nodes:
            self.heartbeats[sender] = time.monotonic()
            self._send(sender, Meta(HEARTBEAT, [self.me]))
        else:
            who = "an unregistered sender" if sender not in self.nodes else f"node {sender}"
            self._drop(f"command {meta.cmd} from {who}")

    def _drop(self, what: str) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning("dropped %s (later drops are only counted)", what)
        else:
            log.debug("dropped %s", what)

    def _add(self, node: Node) -> None:
        if len(self.nodes) < self.num_servers + self.num_workers:
            self.pending.append(node)
            if len(self.pending) == self.num_servers + self.num_workers:
                self._start()
            return
        dead = [
            i
            for i, n in sorted(self.nodes.items())
            if n.role == node.role
            and time.monotonic() - self.heartbeats.get(i, 0.0) > self.dead_after
        ]
        if not dead:
            log.error("node %s:%d registered, but no node of its role is dead: ignored",
                      node.hostname, node.port)  # fmt: skip
            return
        new = replace(node, id=dead[0], is_recovery=True)
        self.nodes[new.id] = new
        self.recoveries += 1
        self._connect(new)
        self.heartbeats[new.id] = time.monotonic()
        log.info("node %d (%s:%d) recovered (recovery %d)", new.id, new.hostname, new.port,
                 self.recoveries)  # fmt: skip
        for i in self.nodes:
            if i == new.id:
                self._send(i, Meta(ADD_NODE, [*self.nodes.values(), self.me]))
            elif time.monotonic() - self.heartbeats.get(i, 0.0) <= self.dead_after:
                self._send(i, Meta(ADD_NODE, [new]))

    def _start(self) -> None:
        ranks = {SERVER: 0, WORKER: 0}
        for node in self.pending:
            base = 8 if node.role == SERVER else 9
            n = replace(node, id=base + 2 * ranks[node.role])
            ranks[node.role] += 1
            self.nodes[n.id] = n
            self._connect(n)
            self.heartbeats[n.id] = time.monotonic()
        everyone = Meta(ADD_NODE, [*self.nodes.values(), self.me])
        for i in self.nodes:
            self._send(i, everyone)
        log.info("%d servers and %d workers connected", self.num_servers, self.num_workers)

    def _group(self, group: int) -> List[int]:
        ids = []
        if group & SERVER_GROUP:
            ids += [i for i, n in self.nodes.items() if n.role == SERVER]
        if group & WORKER_GROUP:
            ids += [i for i, n in self.nodes.items() if n.role == WORKER]
        return ids

    def _barrier(self, sender: Optional[int], meta: Meta) -> None:
        group = meta.barrier_group
        members = self._group(group)
        asked = self.barriers.setdefault(group, set())
        if sender not in members or sender in asked:
            self._drop(f"a request for barrier {group} from {sender} (not a member, or again)")
            return
        asked.add(sender)
        if len(asked) < len(members):
            return
        self.barriers[group] = set()
        for i in members:
            self._send(i, Meta(BARRIER, request=False, app_id=meta.app_id,
                               customer_id=meta.customer_id, barrier_group=group))  # fmt: skip

    def _connect(self, node: Node) -> None:
        old = self.senders.pop(node.id, None)
        if old is not None:
            old.close(linger=0)  # type: ignore[attr-defined]
        sock = self.context.socket(self.zmq.DEALER)
        sock.setsockopt(self.zmq.IDENTITY, f"ps{SCHEDULER_ID}".encode())
        sock.setsockopt(self.zmq.LINGER, 0)
        sock.connect(f"tcp://{node.hostname}:{node.port}")
        self.senders[node.id] = sock

    def _send(self, node_id: int, meta: Meta) -> None:
        sock = self.senders.get(node_id)
        if sock is None:
            return
        try:
            sock.send(meta.encode(), self.zmq.NOBLOCK)  # type: ignore[attr-defined]
        except self.zmq.Again:
            log.warning("node %d does not take messages (dead?): dropped one", node_id)


def _invalid(node: Node) -> str:
    """Why ``node`` (a registration) cannot be a ps-lite server or worker ('' if it can)."""
    if node.role not in (SERVER, WORKER):
        return f"role {node.role}"
    if not 0 < node.port < 65536:
        return f"port {node.port}"
    if not HOST.fullmatch(node.hostname):
        return f"host {node.hostname[:64]!r}"
    return ""


def _node_id(identity: bytes) -> Optional[int]:
    if identity.startswith(b"ps") and identity[2:].isdigit():
        return int(identity[2:])
    return None  # a node that has no id yet


def main(
    host: str,
    port: int,
    num_servers: int,
    num_workers: int,
    dead_after: float,
    announced_roles: Tuple[str, ...] = (),
) -> int:
    """Serve; with ``announced_roles``, the nodes to admit arrive on standard input."""
    roles = tuple(ROLES[r] for r in announced_roles)
    scheduler = Scheduler(host, port, num_servers, num_workers, dead_after, announced_roles=roles)
    scheduler.run(announcements=0 if roles else None)
    return 0
