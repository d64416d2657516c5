"""An emulated two-host cluster on one machine, for benchmarks where the network is slow.

Each "host" is a network namespace this script creates (and removes) itself, joined by a veth
pair whose both ends are shaped with ``tc tbf`` (default 1 Gbit/s). Every process on a host runs
under ``unshare --uts`` with a hostname of its own, so Open MPI and hvd_ps see two hosts: shared
memory inside a host, TCP over the shaped link between them. ``mpirun`` runs in the first
namespace and reaches the second through a small remote-shell agent script (``ip netns exec``).
The addresses live only inside these namespaces. Needs root, iproute2 and util-linux.

Example::

    with Cluster(rate="1gbit") as c:
        subprocess.run(c.mpirun(["python", "train.py"], slots=2), check=True)
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import tempfile
from typing import Dict, List, Optional

SUBNET = "10.231.{n}.0/24"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Cluster:
    """Two emulated hosts ``a`` and ``b`` with a shaped link between them."""

    def __init__(self, rate: str = "1gbit", tag: Optional[str] = None) -> None:
        self.rate = rate
        self.tag = tag or str(os.getpid())
        n = os.getpid() % 200 + 20
        self.subnet = SUBNET.format(n=n)
        self.hosts: Dict[str, Dict[str, str]] = {
            name: {
                "ns": f"hvdps-{self.tag}-{name}",
                "dev": f"hv{self.tag[-6:]}{name}",
                "addr": f"10.231.{n}.{i + 1}",
                "hostname": f"hvdps-host-{name}",
            }
            for i, name in enumerate(("a", "b"))
        }
        self.tmp = tempfile.mkdtemp(prefix="hvdps-cluster-")
        self.agent = os.path.join(self.tmp, "agent.sh")
        self.up = False

    # -- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        a, b = self.hosts["a"], self.hosts["b"]
        for h in (a, b):
            _ip("netns", "add", h["ns"])
            _ip("-n", h["ns"], "link", "set", "lo", "up")
        _ip("link", "add", a["dev"], "type", "veth", "peer", "name", b["dev"])
        self.up = True
        for h in (a, b):
            _ip("link", "set", h["dev"], "netns", h["ns"])
            _ip("-n", h["ns"], "addr", "add", h["addr"] + "/24", "dev", h["dev"])
            _ip("-n", h["ns"], "link", "set", h["dev"], "up")
            if self.rate:
                subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        h["ns"],
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        h["dev"],
                        "root",
                        "tbf",
                        "rate",
                        self.rate,
                        "burst",
                        "256kb",
                        "latency",
                        "50ms",
                    ],
                    check=True,
                    capture_output=True,
                )
        lines = [
            "#!/bin/sh",
            "# remote-shell agent for mpirun: run a command on an emulated host",
            'while [ "${1#-}" != "$1" ]; do shift; done',
            "host=$1; shift",
            'case "$host" in',
        ]
        for h in (a, b):
            lines.append(
                f"  {h['addr']}|{h['hostname']}) exec ip netns exec {h['ns']} unshare --uts "
                f'sh -c "hostname {h["hostname"]}; export DMLC_NODE_HOST={h["addr"]}; $*" ;;'
            )
        lines += ['  *) echo "agent: unknown host $host" >&2; exit 1 ;;', "esac"]
        with open(self.agent, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.agent, stat.S_IRWXU)

    def destroy(self) -> None:
        for h in self.hosts.values():
            subprocess.run(["ip", "netns", "del", h["ns"]], capture_output=True)
        if os.path.exists(self.agent):
            os.remove(self.agent)
        if os.path.isdir(self.tmp):
            os.rmdir(self.tmp)
        self.up = False

    # -- commands -----------------------------------------------------------------------
    def mpirun(self, argv: List[str], slots: int = 2, env: Optional[List[str]] = None) -> List[str]:
        """The command that runs ``argv`` with ``slots`` ranks on each host (from host a)."""
        a, b = self.hosts["a"], self.hosts["b"]
        forward = ["PATH", "PYTHONPATH", "OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS"]
        forward += [k for k in (env or []) if k not in forward]
        mpi = [
            "mpirun",
            "-np",
            str(2 * slots),
            "-H",
            f"{a['addr']}:{slots},{b['addr']}:{slots}",
            "--bind-to",
            "none",
            "--mca",
            "plm_rsh_agent",
            self.agent,
            "--mca",
            "btl",
            "self,vader,tcp",
            "--mca",
            "btl_tcp_if_include",
            self.subnet,
            "--mca",
            "oob_tcp_if_include",
            self.subnet,
        ]
        for k in forward:
            mpi += ["-x", k]
        inner = f"hostname {a['hostname']}; export DMLC_NODE_HOST={a['addr']}; exec " + " ".join(
            shlex.quote(x) for x in mpi + list(argv)
        )
        return ["ip", "netns", "exec", a["ns"], "unshare", "--uts", "sh", "-c", inner]
