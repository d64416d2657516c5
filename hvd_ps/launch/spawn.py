"""Starting, watching and stopping the PS tier's processes on this host.

Used by the embedded tier (global rank 0 starts a scheduler and servers of its own) and by
``hvdps-run``. Every child runs ``python -m hvd_ps.server`` in a process group of its own, is
killed by the kernel if its parent dies (``PR_SET_PDEATHSIG``) and also exits by itself when
it sees its parent gone, so no server outlives the job.

A tier whose scheduler registers only announced nodes (``HVD_PS_ANNOUNCED``, hvd_ps's scheduler
of a ``--servers-only`` tier: :mod:`hvd_ps.ps.scheduler`) gets its announcements on the
scheduler's standard input, a pipe from this process: :meth:`LocalTier.announce`. Each local
server then binds a port picked here (ps-lite's ``PORT``), announced as it starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .. import addresses, config
from ..errors import TierError
from . import processes


@dataclass
class LocalTier:
    """Scheduler and/or servers started on this host, for ``num_workers`` PS clients."""

    host: str
    port: int
    num_servers: int
    num_workers: int
    procs: Dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: bool = False
    #: the scheduler registers only nodes announced through :meth:`announce`
    announced: bool = False
    #: the ports the servers bind, in order (a job's tunnels plan them); else free ones
    server_ports: List[int] = field(default_factory=list)

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self.procs.values()]

    def _spawn(self, name: str, role: str, env_extra: Dict[str, str]) -> None:
        ps = config.ps_environment(
            role, self.host, self.port, self.num_servers, self.num_workers, self.host
        )
        port = None
        if role == "server" and self.server_ports:
            port = self.server_ports.pop(0)
            ps.update(config.node_port(port))
        elif role == "server" and self.announced:
            port = addresses.free_port(self.host)
            ps.update(config.node_port(port))
        pipe = role == "scheduler" and self.announced
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hvd_ps.server"],
            env=config.local_server_environment({**ps, **env_extra}),
            stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=processes.die_with_parent,
        )
        if port is not None and self.announced:
            self.announce("server", self.host, port)

    def announce(self, role: str, host: str, port: int) -> None:
        """Tell the scheduler that a node of ``role`` at ``host:port`` may register (once)."""
        scheduler = self.procs.get("scheduler")
        if scheduler is None or scheduler.stdin is None:
            return
        line = json.dumps({"role": role, "host": host, "port": port}).encode() + b"\n"
        try:
            scheduler.stdin.write(line)
            scheduler.stdin.flush()
        except OSError:
            pass  # the scheduler is gone: the tier reports its death

    def dead(self) -> Optional[str]:
        """Describes a child that has exited, or None while all run."""
        return processes.first_ended(self.procs)

    def watch(self, on_death: Callable[[str], None], period: float = 0.2) -> None:
        """Call ``on_death(description)`` from a thread if a child dies before :meth:`stop`."""

        def loop() -> None:
            while not self.stopping:
                what = self.dead()
                if what is not None and not self.stopping:
                    on_death(what)
                    return
                time.sleep(period)

        threading.Thread(target=loop, name="hvd_ps-tier-watch", daemon=True).start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop every child: wait up to ``grace`` seconds for them to exit by themselves, then
        stop their process groups (:func:`processes.stop_groups`, 2 s after SIGTERM and 2 s
        after SIGKILL)."""
        self.stopping = True
        processes.wait_then_stop(list(self.procs.values()), grace)


def start(
    num_servers: int,
    num_workers: int,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    timeout: float = 60.0,
    scheduler: bool = True,
    env_extra: Optional[Dict[str, str]] = None,
    announced: bool = False,
    server_ports: Optional[List[int]] = None,
) -> LocalTier:
    """Start a scheduler (unless ``scheduler=False``) and ``num_servers`` servers here;
    ``announced``: the scheduler (hvd_ps's, told by ``env_extra``) takes announcements on a pipe;
    ``server_ports``: the ports the servers bind (default: free ones, or ps-lite's choice).

    Waits until the scheduler listens. With ``port=None`` a free port is picked (and another
    one tried if it was taken in the meantime); an explicit ``port`` that is in use raises
    :class:`TierError`.
    """
    tries = 3 if port is None else 1
    extra = dict(env_extra or {})
    for attempt in range(tries):
        tier = LocalTier(host, port or addresses.free_port(host), num_servers, num_workers)
        tier.announced = scheduler and announced
        tier.server_ports = list(server_ports or [])
        if scheduler and addresses.port_open(host, tier.port):
            if attempt + 1 < tries:
                continue
            raise TierError(
                f"port {tier.port} on {host} is in use: cannot start the scheduler; pick another "
                "port (hvdps-run --ps-port), or leave it out for a free one"
            )
        if scheduler:
            tier._spawn("scheduler", "scheduler", extra)
        for i in range(num_servers):
            tier._spawn(f"server {i}", "server", extra)
        if not scheduler:
            return tier
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            what = tier.dead()
            if what is not None:
                tier.stop(grace=0)
                if "scheduler" in what and attempt + 1 < tries:
                    break  # most likely lost the port race: try another port
                raise TierError(f"{what} while starting (scheduler port {host}:{tier.port})")
            if addresses.port_open(host, tier.port):
                return tier
            time.sleep(0.05)
        else:
            tier.stop(grace=0)
            raise TierError(
                f"the PS scheduler did not listen on {host}:{tier.port} within {timeout:g} s"
            )
    raise TierError(f"could not start a PS scheduler on {host} after {tries} tries")
