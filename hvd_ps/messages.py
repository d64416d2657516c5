"""One JSON object per line over a TCP socket: the messages of ``hvdps-run``'s rendezvous and of
a shared tier's roster, bounded in size and in time (whatever arrives is untrusted)."""

from __future__ import annotations

import json
import socket
from typing import Any, Dict

#: the longest message (bytes, newline included) a receiver accepts
MAX_MESSAGE = 64 * 1024


def send(sock: socket.socket, message: Dict[str, Any]) -> None:
    """``message`` as one JSON line."""
    sock.sendall(json.dumps(message).encode() + b"\n")


def receive(sock: socket.socket, timeout: float) -> Dict[str, Any]:
    """One JSON line from ``sock`` within ``timeout`` seconds (OSError/ValueError if not)."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a whole message arrived")
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("message too long")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message
