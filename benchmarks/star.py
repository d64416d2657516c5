"""An emulated cluster of N hosts on one machine: network namespaces around a switch.

Each "host" is a network namespace with one interface (``hvps0``), a veth pair whose other end
sits on a bridge in a "switch" namespace. Both ends are shaped with ``tc tbf`` to the link
rate, so each host has a full-duplex link of that rate to the others, as with one NIC per host
on a switch. Every process on a host runs under ``unshare --uts`` with that host's name, so
Open MPI (shared memory inside a host, TCP across) and ps-lite see separate hosts. The host
names resolve inside the namespaces only; the addresses (10.232.x.0/24) exist only there.
:meth:`StarCluster.counters` reads each host's interface counters: what crossed the links.

It is the recipe of ``benchmarks/cluster.py`` (two namespaces and one veth pair) with a switch,
so that 4 hosts can be joined. Needs root, iproute2 (with the bridge module) and util-linux.

Example::

    with StarCluster(hosts=4, rate="100mbit") as c:
        subprocess.run(c.mpirun(["python", "job.py"], slots=1), check=True)
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence

DEV = "hvps0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class StarCluster:
    """``hosts`` emulated hosts ``h0``.. on a switch, links shaped to ``rate`` (None: unshaped)."""

    def __init__(self, hosts: int, rate: Optional[str] = "1gbit", tag: Optional[str] = None):
        if not 1 <= hosts <= 32:
            raise ValueError(f"hosts must be in 1..32, got {hosts}")
        self.rate = rate
        self.tag = (tag or str(os.getpid()))[-6:]
        n = os.getpid() % 200 + 20
        self.subnet = f"10.232.{n}.0/24"
        self.switch = f"hvs-{self.tag}-sw"
        self.hosts: List[Dict[str, str]] = [
            {
                "ns": f"hvs-{self.tag}-h{i}",
                "addr": f"10.232.{n}.{i + 1}",
                "hostname": f"hvdps-h{i}",
                "veth": f"hs{self.tag}{i}",
                "port": f"hw{self.tag}{i}",
            }
            for i in range(hosts)
        ]
        self.tmp = tempfile.mkdtemp(prefix="hvdps-star-")
        self.agent = os.path.join(self.tmp, "ssh")
        self.made: List[str] = []

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> StarCluster:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _shape(self, ns: str, dev: str) -> None:
        if self.rate:
            _ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                self.rate, "burst", "256kb", "latency", "50ms")  # fmt: skip

    def create(self) -> None:
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h['addr']} {h['hostname']}\n" for h in self.hosts
        )
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for h in self.hosts:
            _ip("netns", "add", h["ns"])
            self.made.append(h["ns"])
            etc = f"/etc/netns/{h['ns']}"
            os.makedirs(etc, exist_ok=True)
            with open(f"{etc}/hosts", "w") as f:
                f.write(hosts_file)
            _ip("-n", h["ns"], "link", "set", "lo", "up")
            _ip("link", "add", h["veth"], "type", "veth", "peer", "name", h["port"])
            _ip("link", "set", h["veth"], "netns", h["ns"])
            _ip("link", "set", h["port"], "netns", self.switch)
            _ip("-n", h["ns"], "link", "set", h["veth"], "name", DEV)
            _ip("-n", h["ns"], "addr", "add", h["addr"] + "/24", "dev", DEV)
            _ip("-n", h["ns"], "link", "set", DEV, "up")
            _ip("-n", self.switch, "link", "set", h["port"], "master", "br0")
            _ip("-n", self.switch, "link", "set", h["port"], "up")
            self._shape(h["ns"], DEV)  # what the host sends
            self._shape(self.switch, h["port"])  # what it receives
        lines = [
            "#!/bin/sh",
            "# ssh stand-in for mpirun: run a command on an emulated host",
            'while [ "${1#-}" != "$1" ]; do shift; done',
            "host=$1; shift",
            'case "$host" in',
        ]
        for h in self.hosts:
            lines.append(
                f"  {h['addr']}|{h['hostname']}) exec ip netns exec {h['ns']} unshare --uts "
                f'sh -c "hostname {h["hostname"]}; export DMLC_NODE_HOST={h["addr"]}; $*" ;;'
            )
        lines += ['  *) echo "ssh: unknown host $host" >&2; exit 255 ;;', "esac"]
        with open(self.agent, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.agent, stat.S_IRWXU)

    def destroy(self) -> None:
        """Kill what is left inside the namespaces (processes this cluster's jobs started),
        then delete the namespaces and the files made here."""
        for ns in self.made:
            got = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                 timeout=30)  # fmt: skip
            for pid in got.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            etc = f"/etc/netns/{ns}"
            if os.path.exists(f"{etc}/hosts"):
                os.remove(f"{etc}/hosts")
            if os.path.isdir(etc):
                os.rmdir(etc)
        self.made = []
        if os.path.isdir("/etc/netns") and not os.listdir("/etc/netns"):
            os.rmdir("/etc/netns")
        if os.path.exists(self.agent):
            os.remove(self.agent)
        if os.path.isdir(self.tmp):
            os.rmdir(self.tmp)

    # -- use ------------------------------------------------------------------------------------
    def counters(self) -> List[Dict[str, int]]:
        """Bytes each host's interface has sent and received so far (frames, as tc counts)."""
        out = []
        for h in self.hosts:
            got = {}
            for key in ("tx_bytes", "rx_bytes"):
                path = f"/sys/class/net/{DEV}/statistics/{key}"
                text = subprocess.run(["ip", "netns", "exec", h["ns"], "cat", path],
                                      check=True, capture_output=True, text=True,
                                      timeout=30).stdout  # fmt: skip
                got[key] = int(text)
            out.append(got)
        return out

    def on(self, host: int, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> List[str]:
        """The command that runs ``argv`` on host ``host`` (with ``env`` exported there)."""
        h = self.hosts[host]
        exports = {"DMLC_NODE_HOST": h["addr"], **(env or {})}
        inner = (
            f"hostname {h['hostname']}; "
            + "".join(f"export {k}={shlex.quote(v)}; " for k, v in exports.items())
            + 'exec "$@"'
        )
        return ["ip", "netns", "exec", h["ns"], "unshare", "--uts", "sh", "-c", inner, "sh",
                *argv]  # fmt: skip

    def mpirun(self, argv: Sequence[str], slots: int, env: Sequence[str] = ()) -> List[str]:
        """The command that runs ``argv`` with ``slots`` ranks on each host (from host 0),
        forwarding the environment variables named in ``env``."""
        forward = ["PATH", "PYTHONPATH", "OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS"]
        forward += [k for k in env if k not in forward]
        mpi = ["mpirun", "-np", str(slots * len(self.hosts)),
               "-H", ",".join(f"{h['addr']}:{slots}" for h in self.hosts),
               "--bind-to", "none", "--mca", "plm_rsh_agent", self.agent,
               "--mca", "btl", "self,vader,tcp", "--mca", "btl_tcp_if_include", self.subnet,
               "--mca", "oob_tcp_if_include", self.subnet]  # fmt: skip
        for k in forward:
            mpi += ["-x", k]
        return self.on(0, mpi + list(argv))
