"""Addresses and ports of this host: which to bind, which to advertise, whether one is in use.

Used by the embedded tier (:mod:`hvd_ps.launch.spawn`, :mod:`hvd_ps.train.runtime`), by a group
leader joining the tier (:mod:`hvd_ps.ps.client`) and by ``hvdps-run`` (:mod:`hvd_ps.launch.cli`).
Only ``port_open`` sends anything: it opens (and closes) a TCP connection.
"""

from __future__ import annotations

import socket
from typing import Set, Tuple

from .errors import TierError


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def route_address(remote: str) -> str:
    """This host's address on the route to ``remote`` (no packet is sent); ``127.0.0.1`` for a
    loopback ``remote``. Raises :class:`TierError` when no route leads there."""
    if remote.startswith("127.") or remote == "localhost":
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((remote, 9))  # a UDP connect only picks the route; port 9 is never used
        except OSError as err:
            raise TierError(f"no route to the PS scheduler host {remote}: {err}") from None
        return str(s.getsockname()[0])


def host_address() -> str:
    """The first non-loopback IPv4 address this host's name resolves to; raises
    :class:`TierError` when there is none (the message says to set ``DMLC_NODE_HOST``)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        addr = str(info[4][0])
        if not addr.startswith("127."):
            return addr
    raise TierError(
        "this job spans several hosts, but the host name of rank 0 does not resolve to a "
        "non-loopback address; set DMLC_NODE_HOST to the address the PS tier should bind"
    )


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port`` (within 0.5 s)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def can_bind(address: str, port: int = 0) -> bool:
    """True when a TCP server may bind ``address:port`` now: ``address`` is this host's and
    (unless ``port`` is 0) nothing holds that port there (connections closing on it, in
    TIME_WAIT, do not count: servers bind with ``SO_REUSEADDR``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False


def listening() -> Set[Tuple[str, int]]:
    """The IPv4 ``(address, port)`` pairs where a TCP socket of this network namespace listens
    (read from ``/proc/net/tcp``; nothing is sent)."""
    found: Set[Tuple[str, int]] = set()
    try:
        with open("/proc/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return found
    for row in rows:
        fields = row.split()
        if len(fields) < 4 or fields[3] != "0A":  # TCP_LISTEN
            continue
        addr, _, port = fields[1].partition(":")
        raw = bytes.fromhex(addr)[::-1]  # the kernel writes the address in host byte order
        found.add((socket.inet_ntoa(raw), int(port, 16)))
    return found
