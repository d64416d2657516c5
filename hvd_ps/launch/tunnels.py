"""``hvdps-run``'s side of the tunnels of a job on several hosts: the port plan, and one tunnel
endpoint (:mod:`hvd_ps.launch.tunnel_endpoint`) per host, started before the tier and stopped
after it.

The port plan gives every ps-lite node of the job a loopback port of its own, the same on every
host: the scheduler, each server, and on each job host one port per slot for the leaders (a
leader binds ``first + its local rank``: only its host's launcher knows which rank leads, so
every slot has one). The ports are picked below Linux's ephemeral range (32768 and up, where
outgoing connections take theirs) and checked free on this host; ``--ps-port`` keeps the
scheduler's. The ranks learn their host's leader ports from ``HVD_PS_TUNNELS``
(:func:`hvd_ps.config.tunnel_port`).
"""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import addresses, config
from ..errors import TierError
from . import processes, tunnel_endpoint
from .args import Plan

#: the ports the plan picks from (below Linux's default ephemeral range, 32768-60999)
LOW, HIGH = 20000, 32767
#: tries to find a run of free ports
TRIES = 50


@dataclass
class PortPlan:
    """Which loopback port each ps-lite node of the job binds, and where each host is."""

    scheduler: int
    #: the port of server ``i``
    servers: List[int]
    #: per host address: the first leader port and the number of them (its slots)
    leaders: Dict[str, Tuple[int, int]]
    #: every host's address and the ports of its nodes
    hosts: List[tunnel_endpoint.Host]
    #: per host address: the name to reach it with the remote shell (None: this host)
    names: Dict[str, Optional[str]] = field(default_factory=dict)

    def ranks_env(self) -> str:
        """``HVD_PS_TUNNELS``: ``ADDR:FIRST-LAST,...``, the leader ports of each job host."""
        return ",".join(f"{a}:{f}-{f + n - 1}" for a, (f, n) in self.leaders.items())


def _address(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as err:
        raise TierError(f"cannot resolve host {host!r}: {err}") from None


def _free_run(count: int, hosts: Sequence[str], taken: Sequence[int]) -> int:
    """The first of ``count`` consecutive ports free on ``hosts`` and not in ``taken``."""
    rng = random.Random()
    for _ in range(TRIES):
        first = rng.randint(LOW, HIGH - count + 1)
        run = range(first, first + count)
        if any(p in taken for p in run):
            continue
        if all(addresses.can_bind(addr, p) for p in run for addr in hosts):
            return first
    raise TierError(f"no {count} consecutive free ports in {LOW}..{HIGH} on this host")


def make_ports(plan: Plan, is_local: Callable[[str], bool], scheduler: Optional[int]) -> PortPlan:
    """The port plan of ``plan`` (a job with remote hosts); ``is_local(name)`` says whether a
    host name is this host; ``scheduler``: the port ``--ps-port`` asks for (None: any)."""
    here = _address(plan.ps_host)

    def where(name: Optional[str]) -> str:
        return here if name is None or is_local(name) else _address(name)

    names: Dict[str, Optional[str]] = {here: None}
    slots: Dict[str, int] = {}
    for name, n in plan.hosts.items():
        names.setdefault(where(name), name)
        slots[where(name)] = slots.get(where(name), 0) + n
    server_addrs = [where(h) for h in plan.servers]
    for h, addr in zip(plan.servers, server_addrs):
        names.setdefault(addr, h)
    # one run of ports: the scheduler's, the servers', then each host's leader slots
    count = 1 + len(server_addrs) + sum(slots.values())
    first = _free_run(count, ("127.0.0.1", here), [scheduler] if scheduler else [])
    sched = first if scheduler is None else scheduler
    servers = list(range(first + 1, first + 1 + len(server_addrs)))
    leaders, nxt = {}, first + 1 + len(server_addrs)
    for addr, n in slots.items():
        leaders[addr], nxt = (nxt, n), nxt + n
    owned: Dict[str, List[int]] = {addr: [] for addr in names}
    owned[here].append(sched)
    for addr, port in zip(server_addrs, servers):
        owned[addr].append(port)
    for addr, (start, n) in leaders.items():
        owned[addr].extend(range(start, start + n))
    hosts = [tunnel_endpoint.Host(a, tuple(sorted(p))) for a, p in owned.items() if p]
    return PortPlan(sched, servers, leaders, hosts, names)


class Tunnels:
    """The job's tunnel endpoints, one per host: this host's started here, the others' over
    the remote shell ``ssh``."""

    def __init__(self, ports: PortPlan, key: bytes, ssh: Sequence[str]) -> None:
        self.ports = ports
        self.key = tunnel_endpoint.psk(key)
        self.ssh = list(ssh)
        self.procs: Dict[str, subprocess.Popen[bytes]] = {}

    def _argv(self, me: str) -> List[str]:
        args = ["-m", "hvd_ps.launch.tunnel_endpoint", "--me", me]
        for h in self.ports.hosts:
            args += ["--host", h.spec()]
        return args

    def start(self, timeout: float) -> None:
        """Start every endpoint and wait until each listens; raises :class:`TierError` (what
        the endpoint printed is on stderr)."""
        tunnel_endpoint.find_stunnel()  # here too: a clear message before any remote start
        for h in self.ports.hosts:
            name = self.ports.names.get(h.address)
            if name is None:
                argv = [sys.executable, *self._argv(h.address)]
            else:
                env = config.remote_server_environment({})
                argv = processes.remote_command(self.ssh, name, env, sys.executable, os.getcwd(),
                                                self._argv(h.address))  # fmt: skip
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=processes.die_with_parent,
            )
            self.procs[f"tunnel on {name or h.address}"] = proc
            assert proc.stdin is not None
            proc.stdin.write((self.key + "\n").encode())
            proc.stdin.flush()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        waiting = {name: p for name, p in self.procs.items() if p.stdout is not None}
        end = time.monotonic() + timeout
        while waiting:
            left = end - time.monotonic()
            if left <= 0:
                raise TierError(f"{', '.join(waiting)} did not start within {timeout:g} s")
            pipes = [p.stdout for p in waiting.values() if p.stdout is not None]
            ready, _, _ = select.select(pipes, [], [], min(left, 1))
            for name, proc in list(waiting.items()):
                if proc.stdout is not None and proc.stdout in ready:
                    line = proc.stdout.readline().decode(errors="replace").strip()
                    if line == tunnel_endpoint.READY:
                        del waiting[name]
                        continue
                    if not line:  # its end: reap it to say how it ended
                        try:
                            proc.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            pass
                what = processes.ended(f"PS {name}", proc)
                if what is not None:
                    raise TierError(f"{what} while starting (its message is above)")

    def failed(self) -> Optional[str]:
        """An endpoint that has ended, described; None while all run."""
        return processes.first_ended(self.procs)

    def stop(self) -> None:
        """Close every endpoint's standard input (it then stops by itself), then stop their
        process groups."""
        for proc in self.procs.values():
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
        processes.wait_then_stop(list(self.procs.values()), 3.0)
