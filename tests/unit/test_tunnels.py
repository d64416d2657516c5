"""The tunnels of a job on several hosts: the port plan (hvd_ps/launch/tunnels.py) and one
host's endpoint (hvd_ps/launch/tunnel_endpoint.py), the latter with a real stunnel on loopback
addresses: ``127.0.0.2`` plays this host's address on the job's network, ``127.0.0.3`` another
host's (whose end is not started: the two-host job test is in tests/jobs/test_launch_hosts.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from hvd_ps import addresses, config
from hvd_ps.errors import TierError
from hvd_ps.launch import args, tunnels
from hvd_ps.launch import tunnel_endpoint as te

ROOT = Path(__file__).resolve().parents[2]
KEY = te.psk(b"0123456789abcdef0123456789abcdef")


# -- the plan and stunnel's configuration ----------------------------------------------------


def test_host_specs_parse_and_refuse_what_is_not_a_port_list() -> None:
    h = te.parse_host("10.0.0.1=9000,9002-9004")
    assert h == te.Host("10.0.0.1", (9000, 9002, 9003, 9004))
    assert te.parse_host(h.spec()) == h
    for bad in ("10.0.0.1", "host=9000", "10.0.0.1=0", "10.0.0.1=9000,9000", "10.0.0.1=9-x"):
        with pytest.raises(ValueError):
            te.parse_host(bad)


def test_the_key_is_derived_from_the_secret_and_from_nothing_else() -> None:
    assert len(KEY) == 64 and int(KEY, 16) >= 0
    assert te.psk(b"0123456789abcdef0123456789abcdef") == KEY
    assert te.psk(b"0123456789abcdef0123456789abcdeF") != KEY
    assert KEY not in te.PSK_LABEL.decode()


def test_config_serves_this_hosts_nodes_and_reaches_the_others() -> None:
    hosts = [te.Host("10.0.0.1", (9000, 9001)), te.Host("10.0.0.2", (9002,))]
    text = te.config(hosts, "10.0.0.1", "/k")
    sections = [s for s in text.split("\n\n") if s.startswith("[")]
    assert [s.splitlines()[0] for s in sections] == ["[node-9000]", "[node-9001]",
                                                     "[to-10.0.0.2-9002]"]  # fmt: skip
    assert "accept = 10.0.0.1:9000\nconnect = 127.0.0.1:9000" in sections[0]
    assert "client = yes" in sections[2] and "accept = 127.0.0.1:9002" in sections[2]
    assert "connect = 10.0.0.2:9002" in sections[2]
    for s in sections:  # every service: TLS 1.3 with the key, never a certificate
        assert "PSKsecrets = /k" in s and "sslVersionMin = TLSv1.3" in s
    assert te.listeners(hosts, "10.0.0.1") == {("10.0.0.1", 9000), ("10.0.0.1", 9001),
                                               ("127.0.0.1", 9002)}  # fmt: skip
    with pytest.raises(ValueError, match="a port is planned on two hosts"):
        te.config([hosts[0], te.Host("10.0.0.2", (9001,))], "10.0.0.1", "/k")
    with pytest.raises(ValueError, match="not among the hosts"):
        te.config(hosts, "10.0.0.3", "/k")


def test_the_port_plan_gives_every_node_a_port_of_its_own() -> None:
    opts = args._parser().parse_args(["-np", "6", "-H", "localhost:2,192.0.2.1:4", "--ps-host",
                                      "127.0.0.1", "--num-servers", "3"])  # fmt: skip
    plan = args.make_plan(opts, config.load({}))
    assert plan.tunnels
    ports = tunnels.make_ports(plan, lambda name: name == "localhost", None)
    here, there = "127.0.0.1", "192.0.2.1"
    by_host = {h.address: set(h.ports) for h in ports.hosts}
    assert set(by_host) == {here, there}
    everything = [p for h in ports.hosts for p in h.ports]
    assert len(everything) == len(set(everything)) == 1 + 3 + 2 + 4
    assert all(tunnels.LOW <= p <= tunnels.HIGH for p in everything)
    assert ports.scheduler in by_host[here]
    # servers round robin over the -H hosts: this host, 192.0.2.1, this host
    assert [p in by_host[h] for p, h in zip(ports.servers, (here, there, here))] == [True] * 3
    assert ports.leaders[here][1] == 2 and ports.leaders[there][1] == 4
    assert ports.names == {here: None, there: there}
    # what the ranks read back: each host's leader ports
    parsed = config.load({"HVD_PS_TUNNELS": ports.ranks_env()}).wiring.tunnels
    assert {a: (f, last - f + 1) for a, f, last in parsed} == ports.leaders
    with_port = tunnels.make_ports(plan, lambda name: name == "localhost", 20000)
    assert with_port.scheduler == 20000


# -- a real endpoint ---------------------------------------------------------------------------


class Echo:
    """A ps-lite node's stand-in on 127.0.0.1:port: echoes upper-cased, counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted: List[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(100)
                self.accepted.append(data)
                conn.sendall(data.upper())


def _endpoint(hosts: List[te.Host], key: str = KEY) -> subprocess.Popen:
    argv = [sys.executable, "-m", "hvd_ps.launch.tunnel_endpoint", "--me", "127.0.0.2"]
    for h in hosts:
        argv += ["--host", h.spec()]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write((key + "\n").encode())
    proc.stdin.flush()
    return proc


@pytest.fixture
def running() -> Iterator[Tuple[Echo, int, int, subprocess.Popen]]:
    te.find_stunnel()  # (the bootstrap installs it: a missing one fails here, naming it)
    echo = Echo()
    other = addresses.free_port("127.0.0.1")
    proc = _endpoint([te.Host("127.0.0.2", (echo.port,)), te.Host("127.0.0.3", (other,))])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line == te.READY, proc.stderr.read().decode() if proc.stderr else ""
        yield echo, echo.port, other, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
        echo.sock.close()


def _through(port: int, key: str, tmp: Path, host: str = "127.0.0.2") -> bytes:
    """Send b"hello" to ``host``:``port`` through a stunnel client holding ``key``; what
    comes back (b"" when the tunnel refused the session)."""
    local = addresses.free_port("127.0.0.1")
    (tmp / "psk").write_text(f"{te.PSK_IDENTITY}:{key}\n")
    os.chmod(tmp / "psk", 0o600)
    (tmp / "c.conf").write_text(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n[c]\nclient = yes\n"
        f"accept = 127.0.0.1:{local}\nconnect = {host}:{port}\n"
        f"PSKsecrets = {tmp / 'psk'}\nPSKidentity = {te.PSK_IDENTITY}\n"
        "sslVersionMin = TLSv1.3\nciphers = PSK\n"
    )
    client = subprocess.Popen([te.find_stunnel(), str(tmp / "c.conf")],
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        end = time.monotonic() + 10
        while ("127.0.0.1", local) not in addresses.listening():
            assert time.monotonic() < end, "the test's stunnel client did not start"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
            s.sendall(b"hello")
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""
    finally:
        client.kill()
        client.wait(timeout=10)


def test_an_endpoint_forwards_only_sessions_that_hold_the_key(running, tmp_path: Path) -> None:
    echo, port, other, proc = running
    # it listens where the plan says: this host's address for its node, loopback for the other
    assert {("127.0.0.2", port), ("127.0.0.1", other)} <= addresses.listening()
    # a stranger speaking plain TCP (ps-lite's wire) is disconnected; the node sees nothing
    with socket.create_connection(("127.0.0.2", port), timeout=10) as s:
        s.sendall(b"\x00" * 64)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    # a TLS client with another key fails the handshake; one with the key gets through
    assert _through(port, te.psk(b"another secret, 16 bytes or more"), tmp_path) == b""
    assert echo.accepted == []
    assert _through(port, KEY, tmp_path) == b"HELLO"
    assert echo.accepted == [b"hello"]
    # the end of its standard input (the launcher gone) stops it; it says what it refused
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.close()
    assert proc.wait(timeout=15) == 0
    err = proc.stderr.read().decode()
    assert re.search(r"hvd_ps tunnel on 127.0.0.2: refused 2 connection\(s\) without the key; "
                     r"stunnel used \d+\.\d\d s of CPU\n", err), err  # fmt: skip
    assert ("127.0.0.2", port) not in addresses.listening()


def test_an_endpoint_whose_port_is_taken_fails_naming_it() -> None:
    te.find_stunnel()
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = _endpoint([te.Host("127.0.0.2", (port,))])
        out, err = proc.communicate(timeout=60)
    finally:
        taken.close()
    assert proc.returncode == 1 and out == b"", err
    assert f"cannot listen on 127.0.0.2:{port}: a port in use" in err.decode()


def test_an_endpoint_without_its_key_on_stdin_refuses_to_start() -> None:
    proc = _endpoint([te.Host("127.0.0.2", (addresses.free_port("127.0.0.2"),))], key="not a key")
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 1
    assert "the tunnel's key did not arrive on standard input" in proc.stderr.read().decode()


def test_the_launcher_reports_an_endpoint_that_cannot_start(monkeypatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    plan = tunnels.PortPlan(port, [], {}, [te.Host("127.0.0.1", (port,))], {"127.0.0.1": None})
    links = tunnels.Tunnels(plan, b"0123456789abcdef0123456789abcdef", ["ssh"])
    try:
        with pytest.raises(
            TierError, match=r"PS tunnel on 127.0.0.1 \(pid \d+\) exited with code 1"
        ):
            links.start(timeout=60)
    finally:
        links.stop()
        taken.close()


class Relay:
    """A man in the middle on 127.0.0.1:port, forwarding to 127.0.0.2:``target``: records what
    the client sends, and with ``tamper`` flips the last byte of every chunk after the first
    (the client's first flight, the ClientHello, passes unchanged)."""

    def __init__(self, target: int, tamper: bool = False) -> None:
        self.target, self.tamper = target, tamper
        self.sent: List[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.2", self.target), timeout=10)
        threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()
        self._pipe(client, server, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    if self.tamper and self.sent:
                        data = data[:-1] + bytes([data[-1] ^ 0x01])
                    self.sent.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_replayed_or_tampered_tunnel_session_is_refused(running, tmp_path: Path) -> None:
    """TLS 1.3 with a fresh key exchange per session: the bytes of a good session, sent again,
    do not make a session, and a session whose records were changed in flight is dropped;
    nothing reaches the node either way."""
    echo, port, _, _ = running
    relay = Relay(port)
    assert _through_relay(relay, tmp_path) == b"HELLO" and echo.accepted == [b"hello"]
    recorded = b"".join(relay.sent)
    assert len(relay.sent) >= 2 and b"hello" not in recorded  # (encrypted on the wire)
    with socket.create_connection(("127.0.0.2", port), timeout=10) as s:
        s.sendall(recorded)  # the replay
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert echo.accepted == [b"hello"], echo.accepted
    tampered = Relay(port, tamper=True)
    assert _through_relay(tampered, tmp_path) == b""
    assert b"hello" not in echo.accepted[1:], echo.accepted


def _through_relay(relay: Relay, tmp: Path) -> bytes:
    """:func:`_through`, but to the relay, which forwards to the endpoint."""
    return _through(relay.port, KEY, tmp, host="127.0.0.1")
