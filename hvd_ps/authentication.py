"""A peer of hvd_ps's own endpoints (the launcher's rendezvous, the roster) proves that it
holds the tier's secret (:mod:`hvd_ps.secret`) before anything it says is acted on, and the
endpoint proves it back.

The handshake, one JSON line each (``Ns``, ``Nc``: 16 random bytes, hex; ``H(k, ...)``:
HMAC-SHA256 with key ``k`` over the concatenated bytes):

1. endpoint: ``{"hello": "hvd_ps", "nonce": Ns}`` (nothing about the job);
2. peer: ``{"nonce": Nc, "proof": H(secret, "hvd_ps peer", Ns, Nc)}``;
3. endpoint, having compared the proof in constant time: ``{"proof": H(secret, "hvd_ps
   endpoint", Ns, Nc)}``, which the peer checks; or ``{"error": ...}`` and the connection
   closed.

Both then hold the session key ``K = H(secret, "hvd_ps session", Ns, Nc)``, and every line is
``MAC JSON``, ``MAC`` being hex ``H(K, direction, n, JSON)``, ``n`` the line's number in its
direction (8 bytes, from 0). A line whose MAC is wrong (tampered with, replayed, or from another
connection: the nonces differ) is dropped and counted, and the next right line still checks.
The lines are not encrypted: they carry group ids, key names and sizes, never a model value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import time
from typing import Any, Dict, Tuple

from . import messages

HELLO = "hvd_ps"
NONCE_BYTES = 16
#: the longest line a peer may send before it proved anything (its proof is ~150 bytes)
HANDSHAKE_LIMIT = 512
#: what a peer that failed the handshake is told (nothing about the job)
REFUSED = "refused: this peer did not prove that it holds the tier's secret"


class Refused(ValueError):
    """The other side did not prove that it holds the secret, or refused this side."""


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _nonce(message: Dict[str, Any], name: str = "nonce") -> bytes:
    raw = message.get(name)
    if not isinstance(raw, str) or len(raw) != 2 * NONCE_BYTES:
        raise Refused(f"no {name} of {NONCE_BYTES} bytes")
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise Refused(f"the {name} is not hex") from None


def _proof(message: Dict[str, Any], expected: bytes) -> None:
    raw = message.get("proof")
    if not isinstance(raw, str) or len(raw) != 2 * len(expected):
        raise Refused(REFUSED)
    try:
        got = bytes.fromhex(raw)
    except ValueError:
        raise Refused(REFUSED) from None
    if not hmac.compare_digest(got, expected):
        raise Refused(REFUSED)


class Session:
    """The sealed lines of one authenticated connection, one side's view."""

    def __init__(self, key: bytes, out: bytes, into: bytes) -> None:
        self.key, self.out, self.into = key, out, into
        self.sent = self.received = 0
        #: lines dropped because their MAC was wrong
        self.dropped = 0

    def seal(self, message: Dict[str, Any]) -> bytes:
        body = messages.encode(message)[:-1]
        mac = _mac(self.key, self.out, self.sent.to_bytes(8, "big"), body)
        self.sent += 1
        return mac.hex().encode() + b" " + body + b"\n"

    def open(self, line: bytes) -> Dict[str, Any]:
        """The message of a sealed line (ValueError, counted in :attr:`dropped`, if its MAC
        is wrong or it is not a JSON object)."""
        mac, _, body = line.partition(b" ")
        expected = _mac(self.key, self.into, self.received.to_bytes(8, "big"), body)
        try:
            good = hmac.compare_digest(bytes.fromhex(mac.decode("ascii")), expected)
            message = messages.decode(body) if good else None
        except ValueError:  # (UnicodeDecodeError included)
            good, message = False, None
        if not good or message is None:
            self.dropped += 1
            raise ValueError("a line whose seal is wrong (dropped)")
        self.received += 1
        return message


class Endpoint:
    """The endpoint's side of one connection's handshake."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.nonce = secrets.token_bytes(NONCE_BYTES)

    def hello(self) -> bytes:
        return messages.encode({"hello": HELLO, "nonce": self.nonce.hex()})

    def check(self, line: bytes) -> Tuple[bytes, Session]:
        """The peer's answer to :meth:`hello`: the line to send back and the session, or
        :class:`Refused` (send :func:`refusal`, then close)."""
        if len(line) > HANDSHAKE_LIMIT:
            raise Refused("handshake line too long")
        try:
            message = messages.decode(line)
        except ValueError:
            raise Refused("not a JSON object") from None
        theirs = _nonce(message)
        _proof(message, _mac(self.secret, b"hvd_ps peer", self.nonce, theirs))
        reply = {"proof": _mac(self.secret, b"hvd_ps endpoint", self.nonce, theirs).hex()}
        key = _mac(self.secret, b"hvd_ps session", self.nonce, theirs)
        return messages.encode(reply), Session(key, b"endpoint", b"peer")


def refusal() -> bytes:
    return messages.encode({"error": REFUSED})


class Channel:
    """A peer's blocking authenticated connection (a leader's lease, rank 0's request):
    sealed JSON lines, each read within a timeout. The endpoints' side is
    :class:`hvd_ps.gate.Gate`."""

    def __init__(self, sock: socket.socket, lines: messages.Lines, session: Session) -> None:
        self.sock, self.lines, self.session = sock, lines, session

    def send(self, message: Dict[str, Any]) -> None:
        self.sock.sendall(self.session.seal(message))

    def receive(self, timeout: float) -> Dict[str, Any]:
        """The next message whose seal is right (wrong ones are dropped) within ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            line = self.lines.next(max(end - time.monotonic(), 1e-3))
            try:
                return self.session.open(line)
            except ValueError:
                continue


def connect(sock: socket.socket, secret: bytes, timeout: float) -> Channel:
    """The peer's side of the handshake on a connected ``sock``; :class:`Refused` if the
    endpoint refused this peer's proof or did not prove itself."""
    lines = messages.Lines(sock)
    hello = messages.decode(lines.next(timeout, HANDSHAKE_LIMIT))
    if hello.get("hello") != HELLO:
        raise Refused("the other side is not an hvd_ps endpoint")
    theirs, mine = _nonce(hello), secrets.token_bytes(NONCE_BYTES)
    proof = _mac(secret, b"hvd_ps peer", theirs, mine).hex()
    sock.sendall(messages.encode({"nonce": mine.hex(), "proof": proof}))
    answer = messages.decode(lines.next(timeout, HANDSHAKE_LIMIT))
    if "error" in answer:
        raise Refused(
            "the endpoint refused this peer's proof: this process does not hold the tier's "
            "secret (HVD_PS_SECRET_FILE must name the file the tier was started with)"
        )
    try:
        _proof(answer, _mac(secret, b"hvd_ps endpoint", theirs, mine))
    except Refused:
        raise Refused(
            "the endpoint did not prove that it holds the tier's secret: it is another "
            "tier's, or a stranger's"
        ) from None
    key = _mac(secret, b"hvd_ps session", theirs, mine)
    return Channel(sock, lines, Session(key, b"peer", b"endpoint"))
