"""An emulated two-host cluster on one machine (used by bench_cluster.py and the launch tests).

Each "host" is a network namespace this module creates (and removes) itself, joined by a veth
pair (named ``hvps0`` inside both namespaces) whose both ends may be shaped with ``tc tbf``.
Every process on a host runs under ``unshare --uts`` with a hostname of its own, so Open MPI
and hvd_ps see two hosts: shared memory inside a host, TCP over the link between them. The
host names resolve inside the namespaces only (``ip netns exec`` bind-mounts
``/etc/netns/NS/hosts`` over ``/etc/hosts``), and the addresses live only there.

A remote-shell agent script takes ``ssh``'s place: ``agent HOST COMMAND...`` (ssh's options,
before or after the host, are accepted and ignored) runs ``sh -c COMMAND`` on the emulated
host, in a session of its own as sshd would (killing the caller's process group does not
reach it; it sees its parent go). :attr:`Cluster.ssh_dir` holds it under the name ``ssh``:
put that directory first on ``PATH`` and ``horovodrun``, Open MPI and ``hvdps-run`` all reach
the hosts through it. Needs root, iproute2 and util-linux.

Example::

    with Cluster(rate="1gbit") as c:
        subprocess.run(c.mpirun(["python", "train.py"], slots=2), check=True)
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence

SUBNET = "10.231.{n}.0/24"
DEV = "hvps0"
#: ssh options that take a value (the agent skips them with it)
SSH_VALUE_OPTIONS = "bcDEeFIiJLlmOopQRSWw"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def can_create() -> Optional[str]:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "unshare", "setsid"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.defpath.split(":")):
            return f"{tool} is not installed"
    probe = f"hvdps-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class Cluster:
    """Two emulated hosts ``a`` and ``b`` with a (shaped) link between them; with
    ``stranger``, a third host ``c`` outside the job (its own link to ``a``, and a route through
    it to the job's network), from which tests attack the job."""

    def __init__(
        self,
        rate: Optional[str] = "1gbit",
        tag: Optional[str] = None,
        hostnames: Sequence[str] = ("hvdps-host-a", "hvdps-host-b"),
        stranger: bool = False,
    ) -> None:
        self.rate = rate
        self.tag = tag or str(os.getpid())
        n = os.getpid() % 200 + 20
        self.subnet = SUBNET.format(n=n)
        self.hosts: Dict[str, Dict[str, str]] = {
            name: {
                "ns": f"hvdps-{self.tag}-{name}",
                "veth": f"hv{self.tag[-6:]}{name}",
                "dev": DEV,
                "addr": f"10.231.{n}.{i + 1}",
                "hostname": hostname,
            }
            for i, (name, hostname) in enumerate(zip(("a", "b"), hostnames))
        }
        if stranger:  # its link: a's end "hvpsc" 10.233.n.1, its own hvps0 10.233.n.2; a routes
            self.hosts["c"] = {"ns": f"hvdps-{self.tag}-c", "veth": f"hv{self.tag[-6:]}c",
                               "dev": DEV, "addr": f"10.233.{n}.2", "hostname": "stranger",
                               "gateway": f"10.233.{n}.1"}  # fmt: skip
        self.tmp = tempfile.mkdtemp(prefix="hvdps-cluster-")
        self.ssh_dir = os.path.join(self.tmp, "bin")
        self.agent = os.path.join(self.ssh_dir, "ssh")
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
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h['addr']} {h['hostname']}\n" for h in (a, b)
        )
        for h in (a, b):
            _ip("netns", "add", h["ns"])
            etc = f"/etc/netns/{h['ns']}"
            os.makedirs(etc, exist_ok=True)
            with open(f"{etc}/hosts", "w") as f:
                f.write(hosts_file)
            _ip("-n", h["ns"], "link", "set", "lo", "up")
        _ip("link", "add", a["veth"], "type", "veth", "peer", "name", b["veth"])
        self.up = True
        for h in (a, b):
            _ip("link", "set", h["veth"], "netns", h["ns"])
            _ip("-n", h["ns"], "link", "set", h["veth"], "name", h["dev"])
            _ip("-n", h["ns"], "addr", "add", h["addr"] + "/24", "dev", h["dev"])
            _ip("-n", h["ns"], "link", "set", h["dev"], "up")
            if self.rate:
                _ip("netns", "exec", h["ns"], "tc", "qdisc", "add", "dev", h["dev"], "root",
                    "tbf", "rate", self.rate, "burst", "256kb", "latency", "50ms")  # fmt: skip
        if "c" in self.hosts:
            c = self.hosts["c"]
            _ip("netns", "add", c["ns"])
            _ip("-n", c["ns"], "link", "set", "lo", "up")
            _ip("link", "add", c["veth"], "type", "veth", "peer", "name", c["veth"] + "a")
            _ip("link", "set", c["veth"] + "a", "netns", a["ns"])
            _ip("-n", a["ns"], "link", "set", c["veth"] + "a", "name", "hvpsc")
            _ip("-n", a["ns"], "addr", "add", c["gateway"] + "/24", "dev", "hvpsc")
            _ip("-n", a["ns"], "link", "set", "hvpsc", "up")
            _ip("link", "set", c["veth"], "netns", c["ns"])
            _ip("-n", c["ns"], "link", "set", c["veth"], "name", DEV)
            _ip("-n", c["ns"], "addr", "add", c["addr"] + "/24", "dev", DEV)
            _ip("-n", c["ns"], "link", "set", DEV, "up")
            _ip("-n", c["ns"], "route", "add", self.subnet, "via", c["gateway"])
            # a routes between the stranger and b (b answers c through a)
            _ip("-n", b["ns"], "route", "add", c["addr"].rsplit(".", 1)[0] + ".0/24", "via",
                a["addr"])  # fmt: skip
            _ip("netns", "exec", a["ns"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._write_agent()

    def _write_agent(self) -> None:
        lines = [
            "#!/bin/sh",
            "# ssh stand-in: run a command on an emulated host, in a session of its own",
            "skip_options() {",
            "  n=0",
            '  while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do',
            '    case "$1" in',
            f"      -[{SSH_VALUE_OPTIONS}]) n=$((n + 2)); shift 2 ;;",
            "      *) n=$((n + 1)); shift ;;",
            "    esac",
            "  done",
            "}",
            'skip_options "$@"; shift $n',
            "host=$1; shift",
            'skip_options "$@"; shift $n',
            'case "$host" in',
        ]
        for h in self.hosts.values():
            lines.append(
                f"  {h['addr']}|{h['hostname']}) exec setsid -w ip netns exec {h['ns']} "
                f'unshare --uts sh -c "hostname {h["hostname"]}; '
                f'export DMLC_NODE_HOST={h["addr"]}; $*" ;;'
            )
        lines += ['  *) echo "ssh: unknown host $host" >&2; exit 255 ;;', "esac"]
        os.makedirs(self.ssh_dir, exist_ok=True)
        with open(self.agent, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.agent, stat.S_IRWXU)

    def pids(self) -> Dict[str, List[int]]:
        """The processes inside each host's namespace, by host name (``a``, ``b``)."""
        out: Dict[str, List[int]] = {}
        for name, h in self.hosts.items():
            got = subprocess.run(
                ["ip", "netns", "pids", h["ns"]], capture_output=True, text=True, timeout=30
            )
            out[name] = [int(p) for p in got.stdout.split()] if got.returncode == 0 else []
        return out

    def destroy(self) -> None:
        """Kill what is left inside the namespaces, delete them and the files made here."""
        if self.up:
            for pids in self.pids().values():
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for h in self.hosts.values():
            subprocess.run(["ip", "netns", "del", h["ns"]], capture_output=True, timeout=30)
            etc = f"/etc/netns/{h['ns']}"
            if os.path.exists(f"{etc}/hosts"):
                os.remove(f"{etc}/hosts")
            if os.path.isdir(etc):
                os.rmdir(etc)
        if os.path.isdir("/etc/netns") and not os.listdir("/etc/netns"):
            os.rmdir("/etc/netns")
        if os.path.exists(self.agent):
            os.remove(self.agent)
        for d in (self.ssh_dir, self.tmp):
            if os.path.isdir(d):
                os.rmdir(d)
        self.up = False

    def exists(self) -> List[str]:
        """The namespaces of this cluster that still exist."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        names = {line.split()[0] for line in listed.splitlines() if line.strip()}
        return [h["ns"] for h in self.hosts.values() if h["ns"] in names]

    # -- commands -----------------------------------------------------------------------
    def on(self, host: str, argv: Sequence[str]) -> List[str]:
        """The command that runs ``argv`` on ``host`` (``a`` or ``b``) as a login there would."""
        h = self.hosts[host]
        inner = f'hostname {h["hostname"]}; exec "$@"'
        return ["ip", "netns", "exec", h["ns"], "unshare", "--uts", "sh", "-c", inner, "sh",
                *argv]  # fmt: skip

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
