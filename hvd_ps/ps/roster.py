"""Which groups of a shared PS tier are alive: joins, deaths, rejoins and leaves.

``hvdps-run --servers-only`` serves several independent ``horovodrun`` jobs; in async mode
they are loosely coupled, so one job's death must not stop the others, and a restarted job must
be able to take its group's place again. ps-lite can hand a dead node's id to a node that
registers later (its "recovery" path: with ``PS_HEARTBEAT_INTERVAL`` on every node and
``PS_HEARTBEAT_TIMEOUT`` on the scheduler, a node that has sent no heartbeat for that long is
dead, and a new node of its role gets its id; MXNet's worker then skips the start and
``kv.init`` barriers). But ps-lite tells no one of a death, and a node that registers while
no node is dead yet is never answered. The roster fills both gaps:

* it listens next to the scheduler (``HVD_PS_ROSTER=host:port`` in the tier's exports). Each
  leader opens one TCP connection, says ``join`` with its global group id, and holds the
  connection for the whole job: its lease. Closing it with ``leave`` is a clean end; the
  connection breaking without one (the process died; TCP keep-alive covers a host that
  vanished) is the group's death, and the tier prints a line naming the group.
* a ``join`` for a group that died (or left) is a rejoin: the answer says so, and how long to
  wait before registering with ps-lite (until the scheduler counts the dead node as dead).
  (ps-lite's own scheduler aborts at its second recovery, so the tier runs hvd_ps's,
  :mod:`hvd_ps.ps.scheduler`, which takes any number.) A
  rejoining leader skips everything that would disturb the others (the barriers, the keys'
  initial values and rules) and starts from the PS's state (:mod:`hvd_ps.train.core.schedule`).
* a leader held back by ``max_staleness`` asks which groups are ``live``: a group that died
  or left stops counting (:mod:`hvd_ps.ps.clock`).
* every leader reports the PS keys it registers (name, size, dtype), so a rejoining job that
  builds another model is refused before it pulls a key the servers do not have.
* the tier ends when every group has left (0), or when no group is alive and a dead one has
  not rejoined within ``HVD_PS_TIMEOUT`` (non-zero, naming it).

Messages are JSON lines (:mod:`hvd_ps.messages`). A connection must prove within
:data:`PROOF_TIME` that it holds the tier's secret (:mod:`hvd_ps.authentication`), and every
line after that is sealed: until then the roster tells it nothing about the job and acts on
nothing it says. It holds at most :data:`MAX_PEERS` connections; a send that blocks for
:data:`SEND_TIME` (a peer that does not read) drops that peer; lines whose seal is wrong are
dropped and counted.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import authentication
from ..errors import TierError, TopologyError
from ..gate import Gate, keepalive

SYNC = (
    "The groups of this tier train in sync mode, whose rounds need every group: the others' "
    "next round cannot close and they fail within HVD_PS_TIMEOUT; restart the tier and every "
    "job (from their checkpoints)"
)

#: seconds, beyond ps-lite's dead-node timeout, that a rejoining leader waits (heartbeat times
#: are whole seconds, and the dead node's last one may be a second late)
MARGIN = 2.0
#: connections the roster holds at once (leases, and peers still proving themselves)
MAX_PEERS = 256
#: seconds a new connection has to prove that it holds the tier's secret
PROOF_TIME = 5.0
#: seconds a send to a peer may block before the roster drops that peer
SEND_TIME = 5.0


# -- the tier's side -----------------------------------------------------------------------------


@dataclass
class Group:
    """What the roster knows of one global group id."""

    state: str = "never"  # never | live | left | dead
    since: float = 0.0  # monotonic time of the last change
    who: str = ""  # the leader, as it said (pid and host)
    joins: int = 0
    live: int = 0  # leases held (more than one only if jobs claim one id at the start)


@dataclass
class Roster:
    """``hvdps-run --servers-only``'s side. ``report(line)`` prints what happens."""

    host: str
    total: int
    dead_after: int  # the scheduler's PS_HEARTBEAT_TIMEOUT
    timeout: float  # how long a dead group may take to come back once no group is alive
    report: Callable[[str], None]
    key: bytes  # the tier's secret
    #: ``announce(role, host, port)``: tell the scheduler a leader's ps-lite node may register
    announce: Optional[Callable[[str, str, int], None]] = None
    groups: Dict[int, Group] = field(default_factory=dict)
    keys: Dict[str, List[Any]] = field(default_factory=dict)
    modes: Set[Any] = field(default_factory=set)  # the trainers' modes the leaders reported
    recoveries: int = 0  # rejoins granted
    #: the joined leaders' connections, by global group id
    gids: Dict[socket.socket, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate = Gate(self.host, self.key, "the roster", self.report, MAX_PEERS,
                         PROOF_TIME, SEND_TIME, alive=True)  # fmt: skip
        self.address = self.gate.address
        self.groups = {g: Group() for g in range(self.total)}

    @property
    def refused(self) -> int:
        """Connections dropped before they proved they hold the tier's secret."""
        return self.gate.refused

    @property
    def dropped(self) -> int:
        """Lines of proven peers dropped: a wrong seal, or not a message the roster takes."""
        return self.gate.dropped

    def poll(self, timeout: float) -> None:
        """Handle what arrives within ``timeout`` seconds."""
        for conn, message in self.gate.poll(timeout):
            if message is None:
                self._gone(conn)
            elif conn in self.gate.peers:  # (not closed by an earlier message: a leave)
                self._handle(conn, message)

    def _handle(self, conn: socket.socket, msg: Dict[str, Any]) -> None:
        gid = self.gids.get(conn)
        if "join" in msg:
            self._send(conn, self._join(conn, msg))
        elif "key" in msg and gid is not None:
            entry = [msg.get("name"), msg.get("size"), msg.get("dtype")]
            self.keys.setdefault(str(msg["key"]), entry)
        elif "live" in msg and gid is not None:
            self._send(conn, {"live": [g for g, s in self.groups.items() if s.state == "live"]})
        elif "mode" in msg and gid is not None:
            self.modes.add(str(msg["mode"]))
        elif "node" in msg and gid is not None:
            self._send(conn, self._node(msg["node"]))
        elif "leave" in msg and gid is not None:
            self.gids.pop(conn)
            self.gate.close(conn)
            self.groups[gid].live -= 1
            if not self.groups[gid].live:
                self._set(gid, "left")
        else:
            self.gate.dropped += 1

    def _node(self, node: Any) -> Dict[str, Any]:
        """A joined leader's ps-lite node (``{"host": H, "port": P}``), announced to the
        scheduler before the leader registers it; the answer tells the leader it may."""
        host = node.get("host") if isinstance(node, dict) else None
        port = node.get("port") if isinstance(node, dict) else None
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            return {"error": f"not a ps-lite node: {node!r:.100}"}
        if self.announce is not None:
            self.announce("worker", host, port)
        return {"ok": True}

    @property
    def started(self) -> bool:
        """Every group has joined once: ps-lite's start is over, later joins are rejoins."""
        return all(g.joins for g in self.groups.values())

    def _join(self, conn: socket.socket, msg: Dict[str, Any]) -> Dict[str, Any]:
        gid, total = msg.get("join"), msg.get("total")
        if not isinstance(gid, int) or not 0 <= gid < self.total:
            if not self.started:  # the leaders' claims on the PS refuse it, in every job
                return {"ok": True, "rejoin": False, "wait": 0, "keys": {}}
            return {"error": f"global group id {gid!r} is not one of 0..{self.total - 1}"}
        group = self.groups[gid]
        if not self.started:
            # Before ps-lite's start is over every job waits in it for all leaders: refusing
            # one here would leave the others waiting until HVD_PS_TIMEOUT. The leaders'
            # claims on the PS (hvd_ps.ps.placement) check ids and totals, every job alike.
            group.joins += 1
            group.live += 1
            group.who = f"pid {msg.get('pid')} on {msg.get('host')}"
            self.gids[conn] = gid
            self._set(gid, "live")
            return {"ok": True, "rejoin": False, "wait": 0, "keys": self.keys}
        if total != self.total:
            return {
                "error": f"the job counts {total} groups in all, the tier serves {self.total} "
                f"(its --num-workers): give every job HVD_PS_TOTAL_GROUPS={self.total}"
            }
        if group.state == "live" or conn in self.gids:
            return {
                "error": f"global group id {gid} is taken by a live leader ({group.who}); give "
                "each job its own HVD_PS_GROUP_OFFSET, or wait until that job ends"
            }
        rejoin = group.state in ("dead", "left")
        if rejoin and "sync" in self.modes:
            return {"error": f"global group id {gid} cannot rejoin: {SYNC}"}
        self.recoveries += rejoin
        wait = max(0.0, group.since + self.dead_after + MARGIN - time.monotonic()) if rejoin else 0
        was = group.state
        group.who = f"pid {msg.get('pid')} on {msg.get('host')}"
        group.joins += 1
        group.live += 1
        self.gids[conn] = gid
        self._set(gid, "live")
        if rejoin:
            how = "died" if was == "dead" else "left"
            self.report(f"group {gid} rejoins the tier (it had {how}); the others go on")
        return {"ok": True, "rejoin": rejoin, "wait": wait, "keys": self.keys}

    def _send(self, conn: socket.socket, message: Dict[str, Any]) -> None:
        if not self.gate.send(conn, message):
            self._gone(conn)

    def _gone(self, conn: socket.socket) -> None:
        self.gate.close(conn)
        gid = self.gids.pop(conn, None)
        if gid is None:
            return
        group = self.groups[gid]
        group.live -= 1
        if group.live:
            return  # another leader claimed the id at the start (its job is refused anyway)
        who = group.who
        self._set(gid, "dead")
        alive = [g for g, s in self.groups.items() if s.state == "live"]
        if "sync" in self.modes:
            self.report(
                f"group {gid} died: its leader ({who}) went away without leaving the tier. {SYNC}"
            )
            return
        self.report(
            f"group {gid} died: its leader ({who}) went away without leaving the tier. The "
            f"PS tier keeps serving the other groups ({alive or 'none alive'}); start that job "
            "again (HVD_PS_GROUP_OFFSET as before) and it rejoins from the PS's state"
        )

    def _set(self, gid: int, state: str) -> None:
        self.groups[gid].state = state
        self.groups[gid].since = time.monotonic()

    def finished(self) -> Optional[Tuple[int, str]]:
        """``(exit code, why)`` once the tier should stop, else None."""
        states = {g: s.state for g, s in self.groups.items()}
        if any(s in ("live", "never") for s in states.values()):
            return None
        dead = [g for g, s in states.items() if s == "dead"]
        if not dead:
            return 0, f"all {self.total} groups have left"
        last = max(self.groups[g].since for g in dead)
        if time.monotonic() - last < self.timeout:
            return None
        return 1, (
            f"group(s) {dead} died and did not rejoin within HVD_PS_TIMEOUT "
            f"({self.timeout:g} s), and no other group is alive"
        )

    def close(self) -> None:
        if self.refused or self.dropped:
            self.report(
                f"the roster refused {self.refused} connection(s) that did not prove they hold "
                f"the tier's secret, and dropped {self.dropped} line(s) of its leaders that "
                "were not sealed right"
            )
        self.gate.shutdown()


# -- a leader's side ---------------------------------------------------------------------------


class Lease:
    """A leader's place on the roster, held from ``hvd_ps.init`` to its end."""

    def __init__(
        self, address: Tuple[str, int], gid: int, total: int, timeout: float, key: bytes
    ) -> None:
        self.where = f"the PS tier's roster at {address[0]}:{address[1]} (HVD_PS_ROSTER)"
        self.gid = gid
        try:
            self.sock = socket.create_connection(address, timeout=min(30.0, timeout))
            keepalive(self.sock)
            self.channel = authentication.connect(self.sock, key, min(30.0, timeout))
            me = {"join": gid, "total": total, "pid": os.getpid(), "host": socket.gethostname()}
            self.channel.send(me)
            reply = self.channel.receive(timeout)
        except (OSError, ValueError) as err:
            raise TierError(f"group {gid}'s leader could not join {self.where}: {err}") from None
        if "error" in reply:
            raise TopologyError(f"{self.where} refused group {gid}: {reply['error']}")
        self.rejoin = bool(reply.get("rejoin"))
        self.wait = float(reply.get("wait") or 0.0)
        self.keys: Dict[str, List[Any]] = dict(reply.get("keys") or {})

    def report_key(self, key: int, name: str, size: int, dtype: str) -> None:
        self._tell({"key": key, "name": name, "size": size, "dtype": dtype})

    def check_key(self, key: int, name: str, size: int, dtype: str) -> None:
        """A rejoining leader: the tier must already serve ``key`` as this job describes it."""
        known = self.keys.get(str(key))
        if known == [name, size, dtype]:
            return
        there = "no such key" if known is None else f"{known[0]} ({known[1]} {known[2]} elements)"
        raise TierError(
            f"group {self.gid} rejoins the PS tier, but its PS key {key} is {name} ({size} "
            f"{dtype} elements) where the tier has {there}: a job that rejoins must build the "
            "same model and trainers, in the same order, as the jobs that started the tier"
        )

    def live_groups(self, timeout: float) -> Optional[Set[int]]:
        """The global group ids the roster counts live now (None: it did not answer)."""
        try:
            self.channel.send({"live": 1})
            reply = self.channel.receive(timeout)
        except (OSError, ValueError):
            return None
        live = reply.get("live")
        if not isinstance(live, list) or not all(isinstance(g, int) for g in live):
            return None
        return set(live)

    def report_mode(self, mode: str) -> None:
        self._tell({"mode": mode})

    def announce(self, host: str, port: int, timeout: float) -> None:
        """Tell the tier this leader's ps-lite node (``host:port``, before it registers):
        the scheduler registers only announced nodes."""
        try:
            self.channel.send({"node": {"host": host, "port": port}})
            reply = self.channel.receive(timeout)
        except (OSError, ValueError) as err:
            raise TierError(f"group {self.gid}'s leader could not announce its node to "
                            f"{self.where}: {err}") from None  # fmt: skip
        if "error" in reply:
            raise TierError(f"{self.where} refused group {self.gid}'s node: {reply['error']}")

    def leave(self) -> None:
        self._tell({"leave": self.gid})
        self.sock.close()

    def _tell(self, message: Dict[str, Any]) -> None:
        try:
            self.channel.send(message)
        except OSError:
            pass  # the tier is gone: the PS calls themselves report it
