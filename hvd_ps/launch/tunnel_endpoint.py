"""One host's end of the tier's tunnels: no ps-lite port of a multi-host job is on the network.

ps-lite cannot tell its peers apart (a sender's id is whatever the peer says it is) and aborts on
malformed input, so in a job that spans hosts no ps-lite node listens on the network at all.
Every node (scheduler, servers, leaders) binds and advertises ``127.0.0.1`` on a port of the
job's *port plan*, a port no other node of the job uses on any host. Each host then runs one
tunnel endpoint (``python -m hvd_ps.launch.tunnel_endpoint``, started by ``hvdps-run`` over
its remote shell), an ``stunnel`` process from the OS packages with two kinds of service:

* for each port of a node on this host: listen on this host's address, same port, and forward
  what a peer's TLS session carries to ``127.0.0.1`` at that port;
* for each port of a node on another host: listen on ``127.0.0.1``, same port, and forward
  over TLS to that host's address, same port.

So a node reaches any other node at ``127.0.0.1:PORT`` on its own host, as ps-lite expects when
every node advertises ``127.0.0.1``, and the bytes cross the network only inside TLS 1.3 with a
pre-shared key (TLS-PSK: no certificates to make or distribute). The key is derived from the
tier's secret (:func:`psk`: HMAC-SHA256 of a fixed label), and reaches each endpoint on its
standard input, never on a command line or in a file another user may read. A peer without the
key fails the TLS handshake and is disconnected before ps-lite sees a byte; the endpoint counts
such refusals. The same standard input is how the endpoint learns that its launcher is gone
(end of file): it then stops stunnel, removes its files, and prints one line: the connections
it refused and the CPU time stunnel used (what the tunnels cost: about 1.7 s of CPU per GB
carried, both ends together, on this project's 2-core test machine).

What stays trusted: the other users of each host's loopback interface (they can reach the
nodes' loopback ports as the job can) and the members of the job.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Deque, List, Optional, Sequence, Set, Tuple

from .. import addresses
from ..errors import TierError
from . import processes

#: the identity every endpoint presents with the key (one key per tier: the identity says
#: nothing a stranger could use)
PSK_IDENTITY = "hvd_ps"
#: what the tier's secret is keyed with to make the tunnels' key (a key for nothing else)
PSK_LABEL = b"hvd_ps tunnel key 1"
#: the line an endpoint prints once every one of its services listens
READY = "hvd_ps tunnel ready"
#: seconds an endpoint waits for stunnel's services to listen
LISTEN_TIMEOUT = 20.0
#: stunnel's lines kept to explain its end (the rest are counted, not stored)
KEEP_LINES = 20
#: a connection idle this long is closed by stunnel (ps-lite's are never idle that long)
IDLE_S = 7 * 24 * 3600


class TunnelError(TierError):
    """A tunnel endpoint that cannot start or that stopped: stunnel missing, a port taken."""


@dataclass(frozen=True)
class Host:
    """A host of the job: its address on the job's network, and the ports its ps-lite nodes
    bind on its loopback interface."""

    address: str
    ports: Tuple[int, ...]

    def spec(self) -> str:
        """``ADDR=P,P,...`` (what :func:`parse_host` reads)."""
        return f"{self.address}={','.join(map(str, self.ports))}"


def parse_host(spec: str) -> Host:
    """``ADDR=PORT,PORT,...`` (ranges ``A-B`` allowed) as a :class:`Host`; raises
    ``ValueError`` naming what is wrong."""
    address, sep, ports = spec.partition("=")
    if not sep or not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", address):
        raise ValueError(f"{spec!r}: expected ADDR=PORT,... with an IPv4 address")
    out: List[int] = []
    for item in ports.split(","):
        first, dash, last = item.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{spec!r}: {item!r} is not a port or a range A-B")
        lo, hi = int(first), int(last) if dash else int(first)
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"{spec!r}: {item!r} is not within 1..65535")
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{spec!r}: a port is listed twice")
    return Host(address, tuple(out))


def psk(secret: bytes) -> str:
    """The tunnels' pre-shared key of a tier whose secret is ``secret``: 64 hex digits."""
    return hmac.new(secret, PSK_LABEL, hashlib.sha256).hexdigest()


def check_plan(hosts: Sequence[Host], me: str) -> None:
    """Raise ``ValueError`` unless ``me`` is one of ``hosts`` and no port is planned twice
    (every node of the job is reached at its port on every host)."""
    if me not in {h.address for h in hosts}:
        raise ValueError(f"this host's address {me} is not among the hosts of the plan")
    if len({h.address for h in hosts}) != len(hosts):
        raise ValueError("a host is listed twice")
    ports = [p for h in hosts for p in h.ports]
    if len(set(ports)) != len(ports):
        raise ValueError("a port is planned on two hosts: each node needs a port of its own")


def config(hosts: Sequence[Host], me: str, psk_file: str) -> str:
    """stunnel's configuration for the endpoint on host ``me`` (see the module's text)."""
    check_plan(hosts, me)
    common = [
        f"PSKsecrets = {psk_file}",
        "ciphers = PSK",
        "sslVersionMin = TLSv1.3",
        "socket = l:TCP_NODELAY=1",
        "socket = r:TCP_NODELAY=1",
        f"TIMEOUTidle = {IDLE_S}",
        "delay = no",
    ]
    lines = ["foreground = yes", "pid =", "syslog = no", "debug = 3", ""]
    for h in hosts:
        for port in h.ports:
            if h.address == me:
                lines += [f"[node-{port}]", f"accept = {me}:{port}", f"connect = 127.0.0.1:{port}"]
            else:
                lines += [f"[to-{h.address}-{port}]", "client = yes",
                          f"PSKidentity = {PSK_IDENTITY}", f"accept = 127.0.0.1:{port}",
                          f"connect = {h.address}:{port}"]  # fmt: skip
            lines += common + [""]
    return "\n".join(lines)


def listeners(hosts: Sequence[Host], me: str) -> Set[Tuple[str, int]]:
    """The addresses the endpoint on ``me`` listens on."""
    return {(me if h.address == me else "127.0.0.1", p) for h in hosts for p in h.ports}


def find_stunnel() -> str:
    """The stunnel executable; raises :class:`TunnelError` saying how to install it."""
    for name in ("stunnel4", "stunnel"):
        path = shutil.which(name)
        if path is not None:
            return path
    raise TunnelError(
        "stunnel is not installed on this host: install it (apt-get install stunnel4, or run "
        "scripts/bootstrap.sh), or start hvdps-run with --no-tunnels on a network you trust"
    )


def read_key() -> str:
    """The pre-shared key, the first line of standard input (64 hex digits, bounded read)."""
    line = sys.stdin.buffer.readline(130).strip()
    if not re.fullmatch(rb"[0-9a-f]{64}", line):
        raise TunnelError(
            "the tunnel's key did not arrive on standard input (64 hex digits expected): start "
            "tunnel endpoints through hvdps-run"
        )
    return line.decode()


class Endpoint:
    """One stunnel process, its files, and what it said."""

    def __init__(self, hosts: Sequence[Host], me: str, key: str, stunnel: str) -> None:
        self.hosts, self.me = list(hosts), me
        taken = sorted(a for a in listeners(hosts, me) if not addresses.can_bind(*a))
        if taken:
            shown = ", ".join(f"{a}:{p}" for a, p in taken[:5])
            raise TunnelError(f"the tunnel on {me} cannot listen on {shown}: a port in use")
        self.dir = tempfile.mkdtemp(prefix="hvdps-tunnel-")  # mode 700
        self.last: Deque[str] = collections.deque(maxlen=KEEP_LINES)
        self.refused = 0
        try:
            key_file = os.path.join(self.dir, "psk")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{PSK_IDENTITY}:{key}\n")
            conf = os.path.join(self.dir, "stunnel.conf")
            with open(conf, "w") as f:
                f.write(config(hosts, me, key_file))
            self.proc = subprocess.Popen(
                [stunnel, conf],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=processes.die_with_parent,
            )
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)  # (the key is in there)
            raise
        threading.Thread(target=self._read, name="stunnel-log", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if "SSL_accept" in line:
                self.refused += 1  # a peer without the key (or one that left mid-handshake)
            elif "No trusted certificates" not in line:  # (PSK needs none)
                self.last.append(line)

    def ready(self, timeout: float) -> None:
        """Wait until every service listens; raises :class:`TunnelError` naming the rest."""
        want = listeners(self.hosts, self.me)
        end = time.monotonic() + timeout
        while True:
            missing = want - addresses.listening()
            if not missing:
                return
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                shown = ", ".join(f"{a}:{p}" for a, p in sorted(missing)[:5])
                said = "; ".join(self.last) or "nothing"
                raise TunnelError(
                    f"the tunnel on {self.me} does not listen on {shown} (a port in use?); "
                    f"stunnel said: {said}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        shutil.rmtree(self.dir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hvd_ps.launch.tunnel_endpoint",
        description="One host's end of a multi-host job's tunnels (started by hvdps-run; the "
        "key arrives on standard input, whose end stops the endpoint).",
    )
    p.add_argument("--me", required=True, help="this host's address (one of the --host)")
    p.add_argument(
        "--host",
        action="append",
        required=True,
        type=parse_host,
        help="ADDR=PORT,... a host of the job and the ps-lite ports its nodes bind",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = _parser().parse_args(argv)
    try:
        check_plan(opts.host, opts.me)
    except ValueError as err:
        _parser().error(str(err))
    name = f"hvd_ps tunnel on {opts.me}"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        key = read_key()
        endpoint = Endpoint(opts.host, opts.me, key, find_stunnel())
        endpoint.ready(LISTEN_TIMEOUT)
    except (TierError, OSError) as err:
        sys.stderr.write(f"{name}: TunnelError: {err}\n")
        return 1

    def watch_stdin() -> None:  # its end: the launcher is gone or done
        while os.read(sys.stdin.fileno(), 4096):
            pass  # (nothing more is sent: whatever comes is dropped)
        stop.set()

    threading.Thread(target=watch_stdin, name="launcher-watch", daemon=True).start()
    print(READY, flush=True)
    try:
        while not stop.wait(0.2):
            if endpoint.proc.poll() is not None:
                said = "; ".join(endpoint.last) or "nothing"
                how = processes.how_ended(endpoint.proc.returncode)
                sys.stderr.write(f"{name}: TunnelError: stunnel {how}; it said: {said}\n")
                return 1
    finally:
        endpoint.stop()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)  # stunnel's, once it was reaped
        sys.stderr.write(
            f"{name}: refused {endpoint.refused} connection(s) without the key; stunnel used "
            f"{used.ru_utime + used.ru_stime:.2f} s of CPU\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
