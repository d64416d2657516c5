"""``hvdps-run`` across two hosts, as the README's "Two or more machines" section says to run it.

The hosts are emulated (benchmarks/cluster.py): two network namespaces ``hostA`` and ``hostB``
joined by a veth pair (``hvps0`` on both sides), each process running under a hostname of its
own, the names resolving inside the namespaces only, and an ``ssh`` stand-in on ``PATH`` that
runs a command on the named host in a session of its own (as sshd would). ``hvdps-run`` runs on
hostA. Every PID seen inside the namespaces during a job is recorded; afterwards none may be
alive, and the namespaces must be gone. Needs root (skipped otherwise, with the reason).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import job_run
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cluster import Cluster, can_create  # noqa: E402

JOB = str(job_run.PROGRAMS / "train_job.py")
LIMIT = 100  # seconds for one hvdps-run (the timeout -k wrapper inside hostA)

NO_NAMESPACES = can_create()
pytestmark = pytest.mark.skipif(NO_NAMESPACES is not None, reason=str(NO_NAMESPACES))


class Recorder:
    """Samples the PIDs inside the cluster's namespaces until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: Set[int] = set()
        self.inodes = {os.stat(f"/run/netns/{h['ns']}").st_ino for h in cluster.hosts.values()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pids in self.cluster.pids().values():
                self.seen.update(pids)
            self._stop.wait(0.3)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> List[int]:
        """Recorded PIDs still running in one of our namespaces (not zombies, not reused)."""
        left = []
        for pid in sorted(self.seen):
            try:
                in_ours = os.stat(f"/proc/{pid}/ns/net").st_ino in self.inodes
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if in_ours and state != "Z":
                left.append(pid)
        return left


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(rate=None, hostnames=("hostA", "hostB"), tag=f"t{os.getpid()}")
    with c:
        yield c
    assert c.exists() == [], "namespaces left behind"
    assert not os.path.exists(f"/etc/netns/{c.hosts['a']['ns']}")


@pytest.fixture
def guarded() -> Iterator[Cluster]:
    """hostA and hostB, and a host outside the job ("stranger", routed to their network
    through hostA)."""
    c = Cluster(rate=None, hostnames=("hostA", "hostB"), tag=f"s{os.getpid()}", stranger=True)
    with c:
        yield c
    assert c.exists() == [], "namespaces left behind"


def _env(cluster: Cluster) -> Dict[str, str]:
    env = job_run.env(OMPI_MCA_oob_tcp_if_include="hvps0")
    env["PATH"] = os.pathsep.join([str(cluster.ssh_dir), env["PATH"]])  # its ssh stand-in
    return env


def _start(cluster: Cluster, flags: List[str], job: List[str], tmp: Path) -> subprocess.Popen:
    """On hostA, the README's command: hvdps-run -np 4 -H hostA:2,hostB:2 --ps-host ... ."""
    argv = ["hvdps-run", "-np", "4", "-H", "hostA:2,hostB:2",
            "--ps-host", cluster.hosts["a"]["addr"], "--network-interfaces", "hvps0",
            *flags, "--pidfile", str(tmp / "pids"),
            "python", JOB, *job, "--token", str(tmp)]  # fmt: skip
    return job_run.start(cluster.on("a", job_run.bounded(argv, LIMIT)), _env(cluster))


def _finish(proc: subprocess.Popen, rec: Recorder, cluster: Cluster) -> None:
    """Nothing the job started may be left: wait a little, then fail naming what is."""
    end = time.monotonic() + 20
    while time.monotonic() < end and (rec.alive() or any(cluster.pids().values())):
        time.sleep(0.3)
    rec.stop()
    left, inside = rec.alive(), cluster.pids()
    job_run.kill([proc])
    assert not left and not any(inside.values()), f"left behind: {left}, in namespaces: {inside}"
    assert len(rec.seen) >= 6, f"only {len(rec.seen)} processes seen: the recorder missed the job"


def _results(out: str) -> List[Tuple[int, int, int, float, float, float]]:
    pattern = r"rank (\d+) group (\d+) of (\d+) loss0 ([\d.]+) loss ([\d.]+) w (-?[\d.]+)"
    return sorted(
        (int(r), int(g), int(n), float(a), float(b), float(w))
        for r, g, n, a, b, w in re.findall(pattern, out)
    )


def _assert_trained(out: str) -> None:
    res = _results(out)
    assert [r[0] for r in res] == [0, 1, 2, 3], out[-3000:]
    assert [(r[1], r[2]) for r in res] == [(0, 2), (0, 2), (1, 2), (1, 2)]  # two groups
    assert len({r[5] for r in res}) == 1  # every rank holds the same global model
    for _, _, _, loss0, loss, _ in res:
        assert loss < 0.01 * loss0  # least squares: 20 steps take the loss down 100x


def _run(cluster: Cluster, flags: List[str], job: List[str], tmp: Path) -> Tuple[int, str, str]:
    rec = Recorder(cluster)
    proc = _start(cluster, flags, job, tmp)
    try:
        out, err = proc.communicate(timeout=LIMIT + 15)
    finally:
        _finish(proc, rec, cluster)
    return proc.returncode, out, err


def test_servers_on_one_host_grouping_given_to_hvdps_run(cluster: Cluster, tmp_path: Path) -> None:
    # the script's hvd_ps.init() names no grouping: it picks up hvdps-run's --group-size
    code, out, err = _run(
        cluster, ["--group-size", "2", "--num-servers", "2", "--server-hosts", "hostB"], [],
        tmp_path,
    )  # fmt: skip
    assert code == 0, err[-3000:]
    _assert_trained(out)
    names = [ln.split(" ", 1)[1] for ln in (tmp_path / "pids").read_text().splitlines()]
    assert names == ["scheduler", "server on hostB #0", "server on hostB #1"]


def test_servers_on_both_hosts_grouping_in_the_script(cluster: Cluster, tmp_path: Path) -> None:
    # no grouping flag: rank 0 reports the script's 2 groups, then the tier starts;
    # the job fails after training with its own exit code, which hvdps-run returns
    code, out, err = _run(
        cluster, ["--num-servers", "2"], ["--group-size", "2", "--exit-code", "3"], tmp_path
    )
    assert code == 3, err[-3000:]
    _assert_trained(out)
    names = [ln.split(" ", 1)[1] for ln in (tmp_path / "pids").read_text().splitlines()]
    assert names == ["scheduler", "server 0", "server on hostB #1"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_job_leaves_nothing(cluster: Cluster, tmp_path: Path, sig: int) -> None:
    rec = Recorder(cluster)
    # the tier starts with the job here (--group-size): the rendezvous is tested above
    job = ["--steps", "100000", "--pause", "0.05"]
    proc = _start(cluster, ["--group-size", "2", "--num-servers", "2"], job, tmp_path)
    try:
        job_run.read_until(proc, r"step 5 loss", LIMIT)
        os.kill(proc.pid, sig)  # the timeout wrapper passes it on to hvdps-run
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, err[-3000:]
        assert f"got signal {int(sig)}; stopping the job and the PS tier" in err
    finally:
        _finish(proc, rec, cluster)


#: a stranger on a host outside the job (no secret): it scans the hosts' addresses for ports in
#: the range the job's ps-lite nodes use (20000..32767), then sends each open one a
#: non-protobuf frame from ZeroMQ's default identity, the frame ps-lite aborts on (``Check
#: failed: pb.ParseFromArray``); prints what it found
STRANGER = """\
import json, socket, sys, time, zmq
found = []
for addr in sys.argv[1:]:
    for port in range(20000, 32768):
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((addr, port)) == 0:
                found.append((addr, port))
ctx = zmq.Context()
for addr, port in found:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://{addr}:{port}")
    s.send(b"junk" * 8)
time.sleep(3)
ctx.destroy(linger=0)
print("stranger found", json.dumps(found), flush=True)
"""


def _listeners(cluster: Cluster, host: str, port: int) -> Dict[str, str]:
    """Who listens on ``port`` on ``host``: address -> process name (from ``ss -ltnp``)."""
    got = subprocess.run(
        ["ip", "netns", "exec", cluster.hosts[host]["ns"], "ss", "-ltnpH", f"sport = :{port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = {}
    for line in got.stdout.splitlines():
        fields = line.split()
        name = re.search(r'users:\(\("([^"]+)"', line)
        out[fields[3].rsplit(":", 1)[0]] = name.group(1) if name else "?"
    return out


@pytest.mark.parametrize("tunnels", [True, False])
def test_ps_lite_ports_are_behind_the_tunnels(
    guarded: Cluster, tmp_path: Path, tunnels: bool
) -> None:
    """A job on two hosts binds no ps-lite port on the network: the scheduler listens on
    hostA's loopback, stunnel on hostA's address (same port) and on hostB's loopback. A
    stranger on a third host scans both hosts and sends every open port the frame that aborts
    ps-lite: each is a tunnel's, which refuses it before ps-lite sees a byte, and the job
    trains to exit 0. With ``--no-tunnels`` the same frame reaches the scheduler and ends the
    tier (exit 75): the test can fail."""
    cluster = guarded
    port = 28000 + os.getpid() % 1000
    a, b = cluster.hosts["a"]["addr"], cluster.hosts["b"]["addr"]
    flags = ["--group-size", "2", "--num-servers", "2", "--ps-port", str(port)]
    flags += [] if tunnels else ["--no-tunnels"]
    rec = Recorder(cluster)
    proc = _start(cluster, flags, ["--steps", "80", "--pause", "0.1"], tmp_path)
    try:
        job_run.read_until(proc, r"step 5 loss", LIMIT)
        here, there = _listeners(cluster, "a", port), _listeners(cluster, "b", port)
        if tunnels:
            assert here == {"127.0.0.1": "python", a: "stunnel4"}, here
            assert there == {"127.0.0.1": "stunnel4"}, there
        else:
            assert here == {a: "python"} and there == {}, (here, there)
        stranger = subprocess.run(
            cluster.on("c", [sys.executable, "-c", STRANGER, a, b]),
            capture_output=True, text=True, timeout=90, env=_env(cluster),
        )  # fmt: skip
        assert "stranger found" in stranger.stdout, stranger.stderr[-2000:]
        found = [tuple(f) for f in json.loads(stranger.stdout.split("stranger found", 1)[1])]
        assert (a, port) in found, found  # it reached the job's network
        if tunnels:  # the scheduler, 2 servers, a leader port per slot: every one a tunnel's
            assert len(found) == 1 + 2 + 4, found
            for addr, p in found:
                host = "a" if addr == a else "b"
                assert _listeners(cluster, host, p)[addr] == "stunnel4", (addr, p)
        out, err = proc.communicate(timeout=LIMIT + 15)
    finally:
        _finish(proc, rec, cluster)
    if tunnels:
        assert proc.returncode == 0, err[-3000:]
        _assert_trained(out)
        refused = re.findall(r"hvd_ps tunnel on \S+: refused (\d+) connection", err)
        assert sum(map(int, refused)) >= len(found), err[-3000:]
    else:
        assert proc.returncode == 75, err[-3000:]
        assert "PS scheduler" in err and "during the job" in err, err[-3000:]


def test_the_embedded_tier_across_hosts_trains_and_warns(cluster: Cluster, tmp_path: Path) -> None:
    """Without hvdps-run (plain mpirun over both hosts), global rank 0 starts the embedded tier
    on its host's address: the job trains, and rank 0 says once that ps-lite's ports are then
    open to anyone who reaches them, and what to use instead."""
    rec = Recorder(cluster)
    argv = cluster.mpirun([sys.executable, JOB, "--group-size", "2"], slots=2,
                          env=["HVD_PS_TIMEOUT", "OMPI_MCA_mpi_yield_when_idle"])  # fmt: skip
    proc = job_run.start(job_run.bounded(argv, LIMIT), _env(cluster))
    try:
        out, err = proc.communicate(timeout=LIMIT + 15)
    finally:
        _finish(proc, rec, cluster)
    assert proc.returncode == 0, err[-3000:]
    _assert_trained(out)
    warning = (
        f"hvd_ps: warning: the embedded PS tier listens on {cluster.hosts['a']['addr']}, where "
        "ps-lite admits anyone who reaches its ports; start jobs on several hosts with "
        "hvdps-run, which keeps those ports behind TLS tunnels"
    )
    assert err.count(warning) == 1, err[-3000:]
