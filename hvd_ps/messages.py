"""One JSON object per line over a TCP socket: the messages of ``hvdps-run``'s rendezvous and of
a shared tier's roster, bounded in size and in time (whatever arrives is untrusted). After a
handshake on the tier's secret each line is sealed (:mod:`hvd_ps.authentication`)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Dict

#: the longest message (bytes, newline included) a receiver accepts
MAX_MESSAGE = 64 * 1024


def encode(message: Dict[str, Any]) -> bytes:
    """``message`` as one JSON line."""
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> Dict[str, Any]:
    """The JSON object of one line (ValueError if it is not one)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message


class Lines:
    """The lines arriving on ``sock``, each within a deadline and :data:`MAX_MESSAGE` bytes
    (what arrived past a line waits for the next call)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def next(self, timeout: float, limit: int = MAX_MESSAGE) -> bytes:
        """The next line (newline left out) within ``timeout`` seconds, however slowly its
        bytes come (OSError/ValueError if not)."""
        end = time.monotonic() + timeout
        while b"\n" not in self.pending:
            if len(self.pending) > limit:
                raise ValueError("message too long")
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole message within {timeout:g} s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before a whole message arrived")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        if len(line) >= limit:
            raise ValueError("message too long")
        return line
