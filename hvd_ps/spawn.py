"""Starting, watching and stopping the PS tier's processes on this host.

Used by the embedded tier (global rank 0 starts a scheduler and servers of its own) and by
``hvdps-run``. Every child runs ``python -m hvd_ps.server`` in a process group of its own, is
killed by the kernel if its parent dies (``PR_SET_PDEATHSIG``) and also exits by itself when
it sees its parent gone, so no server outlives the job.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import config
from .errors import TierError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def route_address(remote: str) -> str:
    """This host's address on the route to ``remote`` (no packet is sent)."""
    if remote.startswith("127.") or remote == "localhost":
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((remote, 9))
        except OSError as err:
            raise TierError(f"no route to the PS scheduler host {remote}: {err}") from None
        return str(s.getsockname()[0])


def host_address() -> str:
    """An address of this host that other hosts can reach (set DMLC_NODE_HOST to choose)."""
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
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class LocalTier:
    """Scheduler and/or servers started on this host, for ``num_workers`` PS clients."""

    host: str
    port: int
    num_servers: int
    num_workers: int
    procs: Dict[str, subprocess.Popen] = field(default_factory=dict)
    stopping: bool = False

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self.procs.values()]

    def _spawn(self, name: str, role: str, env_extra: Dict[str, str]) -> None:
        env = dict(os.environ)
        env.update(
            config.ps_environment(
                role, self.host, self.port, self.num_servers, self.num_workers, self.host
            )
        )
        env.update(env_extra)
        env.pop("HVD_PS_SERVER_ROLE", None)
        # no MPI inside the tier: a server must not look like a rank of the job
        for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PMI_", "HOROVOD_"))]:
            env.pop(k)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hvd_ps.server"],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def dead(self) -> Optional[str]:
        """Describes a child that has exited, or None while all run."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return f"PS {name} (pid {proc.pid}) {how}"
        return None

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
        """Stop every child: wait ``grace`` seconds for a clean exit, then kill its group."""
        self.stopping = True
        end = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=2.0)
                        break
                    except subprocess.TimeoutExpired:
                        continue


def start(
    num_servers: int,
    num_workers: int,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    timeout: float = 60.0,
    scheduler: bool = True,
    env_extra: Optional[Dict[str, str]] = None,
) -> LocalTier:
    """Start a scheduler (unless ``scheduler=False``) and ``num_servers`` servers here.

    Waits until the scheduler listens. With ``port=None`` a free port is picked (and another
    one tried if it was taken in the meantime); an explicit ``port`` that is in use raises
    :class:`TierError`.
    """
    tries = 3 if port is None else 1
    extra = dict(env_extra or {})
    for attempt in range(tries):
        tier = LocalTier(host, port or free_port(host), num_servers, num_workers)
        if scheduler and port_open(host, tier.port):
            if attempt + 1 < tries:
                continue
            raise TierError(f"port {tier.port} on {host} is in use: cannot start the scheduler")
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
            if port_open(host, tier.port):
                return tier
            time.sleep(0.05)
        else:
            tier.stop(grace=0)
            raise TierError(
                f"the PS scheduler did not listen on {host}:{tier.port} within {timeout:g} s"
            )
    raise TierError(f"could not start a PS scheduler on {host} after {tries} tries")
