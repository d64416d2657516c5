"""An endpoint's TCP connections, each heard only once it proved that it holds the tier's
secret: the roster of a shared tier and ``hvdps-run``'s rendezvous both listen through one.

:class:`Gate` accepts connections on ``host`` (a free port) and greets each with the
handshake's hello (:mod:`hvd_ps.authentication`). A connection that does not prove itself
within ``proof_time`` seconds, fails the proof, or sends a first line over the handshake's
limit hears only ``refused`` and is closed; beyond ``max_peers`` connections a new one is closed
at once. These are counted in :attr:`Gate.refused` (the first is reported). After the proof,
every line must be sealed: a line whose seal is wrong is dropped and counted in
:attr:`Gate.dropped`, and the lines that check are handed to the endpoint by :meth:`Gate.poll`.
A send that blocks ``send_time`` seconds (a peer that does not read) ends that connection.
Nothing here waits on a peer: one poll reads what arrived and returns.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import authentication
from .messages import MAX_MESSAGE

#: (connection, message); message None: the connection ended (and is closed)
Event = Tuple[socket.socket, Optional[Dict[str, Any]]]


def keepalive(sock: socket.socket) -> None:
    """Notice a peer whose host is gone within ~5 s (a dead process closes at once)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


@dataclass
class Peer:
    """One connection."""

    endpoint: authentication.Endpoint
    since: float  # monotonic time it was accepted
    session: Optional[authentication.Session] = None  # once it proved it holds the secret
    buffer: bytes = b""


class Gate:
    """The connections of the endpoint ``name`` on ``host`` (see the module's docstring);
    ``report(line)`` hears the first refusal."""

    def __init__(
        self,
        host: str,
        key: bytes,
        name: str,
        report: Callable[[str], None],
        max_peers: int,
        proof_time: float = 5.0,
        send_time: float = 5.0,
        alive: bool = False,
    ) -> None:
        self.key, self.name, self.report = key, name, report
        self.max_peers, self.proof_time, self.send_time = max_peers, proof_time, send_time
        self.alive = alive  # TCP keep-alive on every connection
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.peers: Dict[socket.socket, Peer] = {}
        self.refused = 0
        self.dropped = 0

    def poll(self, timeout: float) -> List[Event]:
        """What arrived within ``timeout`` seconds from proven peers, in order."""
        events: List[Event] = []
        ready, _, _ = select.select([self.sock, *self.peers], [], [], timeout)
        for sock in ready:
            if sock is self.sock:
                self._accept(events)
            elif sock in self.peers:  # (an earlier event may have closed it)
                self._read(sock, events)
        now = time.monotonic()
        for conn, peer in list(self.peers.items()):
            if peer.session is None and now - peer.since > self.proof_time:
                self._refuse(conn, "it did not prove in time that it holds the tier's secret")
        return events

    def send(self, conn: socket.socket, message: Dict[str, Any]) -> bool:
        """Send a sealed ``message`` to a proven peer; False if that ended the connection
        (it is closed then)."""
        peer = self.peers.get(conn)
        if peer is None or peer.session is None:
            return False
        try:
            conn.sendall(peer.session.seal(message))
            return True
        except OSError:  # (a peer that does not read: the send timed out)
            self.close(conn)
            return False

    def detach(self, conn: socket.socket) -> authentication.Session:
        """Hand a proven peer's connection over to the caller (the gate forgets it)."""
        session = self.peers.pop(conn).session
        assert session is not None  # (only proven peers' messages are handed out)
        return session

    def close(self, conn: socket.socket) -> None:
        self.peers.pop(conn, None)
        conn.close()

    def shutdown(self) -> None:
        for conn in list(self.peers):
            self.close(conn)
        self.sock.close()

    def _accept(self, events: List[Event]) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        if len(self.peers) >= self.max_peers:
            conn.close()
            self._count(f"it is one connection more than the {self.max_peers} it holds")
            return
        if self.alive:
            keepalive(conn)
        conn.settimeout(self.send_time)
        peer = Peer(authentication.Endpoint(self.key), time.monotonic())
        self.peers[conn] = peer
        try:
            conn.sendall(peer.endpoint.hello())
        except OSError:
            self.close(conn)

    def _read(self, conn: socket.socket, events: List[Event]) -> None:
        peer = self.peers[conn]
        try:
            chunk = conn.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._ended(conn, peer, events)
            return
        *lines, peer.buffer = (peer.buffer + chunk).split(b"\n")
        for line in lines:
            if peer.session is None:
                try:
                    reply, session = peer.endpoint.check(line)
                    conn.sendall(reply)
                except authentication.Refused:
                    self._refuse(conn, "it did not prove that it holds the tier's secret")
                    return
                except OSError:
                    self.close(conn)
                    return
                peer.session = session
                continue
            try:
                events.append((conn, peer.session.open(line)))
            except ValueError:
                self.dropped += 1
        limit = MAX_MESSAGE if peer.session is not None else authentication.HANDSHAKE_LIMIT
        if len(peer.buffer) > limit:
            if peer.session is None:
                self._refuse(conn, "its first line is too long")
            else:
                self._ended(conn, peer, events)

    def _ended(self, conn: socket.socket, peer: Peer, events: List[Event]) -> None:
        self.close(conn)
        if peer.session is not None:
            events.append((conn, None))

    def _refuse(self, conn: socket.socket, why: str) -> None:
        """Close a connection that has not proved itself (it hears only that it was refused)."""
        self.peers.pop(conn, None)
        try:
            conn.sendall(authentication.refusal())
        except OSError:
            pass
        conn.close()
        self._count(why)

    def _count(self, why: str) -> None:
        self.refused += 1
        if self.refused == 1:
            self.report(
                f"{self.name} refused a connection: {why} (later refusals are only counted)"
            )
