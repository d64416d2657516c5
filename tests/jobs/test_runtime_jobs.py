"""End-to-end runtime tests that need a tier of their own: each runs
``tests/jobs/programs/runtime_job.py`` under ``mpirun`` (bounded by ``timeout`` and by
HVD_PS_TIMEOUT) and checks exit code, messages, wall time, and that no process of the embedded
tier is left. Also the tier's spawner alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import job_run
import pytest

from hvd_ps import addresses
from hvd_ps.deadline import EXIT_CODE
from hvd_ps.errors import TierError
from hvd_ps.launch import spawn

ROOT = Path(__file__).resolve().parents[2]
# HVD_PS_TIMEOUT of the jobs: six ranks and two tiers starting at once on 2 cores took more
# than 15 s under load
TIMEOUT = 30
ROUNDS = 8  # runtime_job.ROUNDS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun"),
]


@dataclass
class Job:
    rc: int
    out: str
    seconds: float

    def tier(self) -> Dict[str, int]:
        m = re.search(r"^rank 0 PIDS (\{.*?\}) PORT (\d+)", self.out, re.M)
        assert m, self.out
        return json.loads(m.group(1))

    def port(self) -> int:
        m = re.search(r"^rank 0 PIDS .* PORT (\d+)", self.out, re.M)
        assert m, self.out
        return int(m.group(1))

    def lines(self, pattern: str) -> List[str]:
        return re.findall(pattern, self.out, re.M)


def job_env(**extra: str) -> Dict[str, str]:
    path = os.pathsep.join([str(ROOT)] + [p for p in sys.path if p.endswith("packages")])
    return job_run.env(**{"PYTHONPATH": path, "HVD_PS_TIMEOUT": str(TIMEOUT), **extra})


def start_job(scenario: str, groups: list, **env: str) -> subprocess.Popen:
    np_ = sum(len(g) for g in groups) if scenario != "bad-groups" else 4
    cmd = job_run.mpirun(np_, *job_run.program("runtime_job.py", scenario, json.dumps(groups)))
    return job_run.start(job_run.bounded(cmd, 120), job_env(**env), merge=True)


def finish(proc: subprocess.Popen, started: float) -> Job:
    out, _ = job_run.finish(proc, 140)
    return Job(proc.returncode, out, time.monotonic() - started)


def run_job(scenario: str, groups: list, **env: str) -> Job:
    started = time.monotonic()
    return finish(start_job(scenario, groups, **env), started)


def alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) hvd_ps tier process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and b"hvd_ps.server" in cmdline


def assert_gone(pids, within: float = 5.0) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if alive(p)] == [], f"tier processes left behind: {pids}"


def assert_rounds_ok(job: Job, ranks: int) -> None:
    for r in range(ranks):
        got = job.lines(rf"^rank {r} round (\d+) ok")
        assert got == [str(i) for i in range(ROUNDS)], (r, job.out[-3000:])
        assert job.lines(rf"^rank {r} (DONE)") == ["DONE"], job.out[-3000:]


# -- lifecycle -----------------------------------------------------------------------------


def test_two_jobs_at_once_sync_and_async_both_succeed_and_leave_nothing():
    """Two embedded tiers on one machine: a sync job (2 groups, uneven) and an async job."""
    started = time.monotonic()
    a = start_job("sync", [[0], [1, 2]])
    b = start_job("async", [[0], [1], [2]])
    job_a, job_b = finish(a, started), finish(b, started)
    assert job_a.rc == 0, job_a.out[-4000:]
    assert job_b.rc == 0, job_b.out[-4000:]
    assert_rounds_ok(job_a, 3)
    # async 'add': initial arange + every push of every group (values: runtime_job.value)
    expect = sum((g + 1) * 1000.0 + r for g in range(3) for r in range(ROUNDS))
    assert job_b.lines(r"^rank \d async ok (\S+)") == [str(expect)] * 3, job_b.out[-3000:]
    assert len(job_b.lines(r"^rank \d (DONE)")) == 3
    assert job_a.port() != job_b.port()
    assert sorted(job_a.tier()) == sorted(job_b.tier()) == ["scheduler", "server 0"]
    assert_gone(list(job_a.tier().values()) + list(job_b.tier().values()))
    assert max(job_a.seconds, job_b.seconds) < 90


def test_servers_leaving_at_shutdown_is_not_a_failure():
    """Rank 0 slow after leaving the tier: the servers' normal exit is no 'death'."""
    job = run_job("sync-slow-close", [[0], [1]])
    assert job.rc == 0, job.out[-4000:]
    assert "HvdPsError" not in job.out
    assert_rounds_ok(job, 2)
    assert_gone(job.tier().values())


def test_bad_groups_raise_on_every_rank_and_init_still_works():
    job = run_job("bad-groups", [[0, 1], [1, 2, 3]])
    assert job.rc == 0, job.out[-4000:]
    errors = job.lines(r"^rank (\d) TopologyError: rank 1 is in groups\[0\] and groups\[1\]")
    assert sorted(errors) == ["0", "1", "2", "3"], job.out[-3000:]
    assert sorted(job.lines(r"^rank (\d) DONE")) == ["0", "1", "2", "3"]
    assert "init accepted a bad layout" not in job.out


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["server 0", "scheduler"])
def test_killing_a_tier_process_ends_the_job_naming_it(victim):
    scenario = "kill-server" if victim == "server 0" else "kill-scheduler"
    job = run_job(scenario, [[0, 1], [2, 3]])
    pids = job.tier()
    assert job.lines(rf"^rank 2 killing {victim} (\d+)") == [str(pids[victim])], job.out[-3000:]
    assert job.rc == EXIT_CODE, job.out[-4000:]
    assert (
        f"HvdPsError: PS {victim} (pid {pids[victim]}) was killed by signal 9 during the job"
        in job.out
    ), job.out[-4000:]
    assert "DONE" not in job.out
    assert job.seconds < TIMEOUT + 45
    assert_gone(pids.values())


def test_command_to_a_dead_server_times_out_naming_it():
    """Nobody watches an external tier: a leader's command to a dead server must still end."""
    job = run_job("dead-server-command", [[0], [1]], HVD_PS_TIMEOUT="8")
    pids = job.tier()
    assert job.lines(r"^rank 1 killing server 0 (\d+)") == [str(pids["server 0"])], job.out
    assert job.rc == EXIT_CODE, job.out[-4000:]
    port = job.port()
    assert (
        f"HvdPsError: sending the 'add' updater of PS key 0 to the PS tier at 127.0.0.1:{port}"
        in job.out
    ), job.out[-4000:]
    assert "did not finish within 8 s (HVD_PS_TIMEOUT)" in job.out
    assert "registered" not in job.out
    assert job.seconds < 8 + 45
    assert_gone(pids.values())


def test_killing_a_leader_ends_the_job_naming_it():
    job = run_job("kill-leader", [[0, 1], [2, 3]])
    assert job.lines(r"^rank 2 (killing myself)"), job.out[-3000:]
    assert job.rc != 0
    assert re.search(r"rank 2 .*exited on signal 9", job.out), job.out[-4000:]
    assert "DONE" not in job.out
    assert job.seconds < TIMEOUT + 45
    assert_gone(job.tier().values())


def test_unreachable_tier_fails_naming_the_connect():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = run_job(
        "connect",
        [[0, 1]],
        DMLC_PS_ROOT_URI="127.0.0.1",
        DMLC_PS_ROOT_PORT=str(port),
        DMLC_NUM_SERVER="1",
        HVD_PS_TIMEOUT="5",
    )
    # refused before ps-lite is asked to connect (it would retry until HVD_PS_TIMEOUT)
    assert job.rc != 0, job.out[-4000:]
    assert (
        f"hvd_ps: TierError: no PS scheduler accepts connections at 127.0.0.1:{port}" in job.out
    ), job.out[-4000:]
    assert "did not finish within" not in job.out
    assert "rank 0 connected" not in job.out
    assert job.seconds < 5 + 40


# -- the spawner alone (no MPI) -----------------------------------------------------------


def spawn_env(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for k in [k for k in os.environ if k.startswith(("DMLC_", "HVD_PS_"))]:
        monkeypatch.delenv(k)


def test_explicit_port_in_use_is_a_tier_error(monkeypatch):
    spawn_env(monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TierError, match=f"port {port} on 127.0.0.1 is in use"):
            spawn.start(1, 1, port=port, timeout=10)
        assert time.monotonic() - started < 3  # refused up front, nothing was spawned


def test_spawned_tier_is_watched_and_stopped(monkeypatch):
    spawn_env(monkeypatch)
    tier: Optional[spawn.LocalTier] = None
    try:
        tier = spawn.start(2, 1, timeout=30)
        assert sorted(tier.procs) == ["scheduler", "server 0", "server 1"]
        assert addresses.port_open("127.0.0.1", tier.port)
        assert tier.dead() is None and all(alive(p) for p in tier.pids)
        seen: List[str] = []
        tier.watch(seen.append, period=0.05)
        victim = tier.procs["server 1"].pid
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 5
        while not seen and time.monotonic() < end:
            time.sleep(0.05)
        assert seen == [f"PS server 1 (pid {victim}) was killed by signal 9"]
        pids = tier.pids
        t0 = time.monotonic()
        tier.stop(grace=0)
        assert time.monotonic() - t0 < 6
        assert_gone(pids, within=1.0)
    finally:
        if tier is not None:
            tier.stop(grace=0)


def test_server_that_cannot_start_is_a_tier_error(monkeypatch):
    spawn_env(monkeypatch)
    started = time.monotonic()
    port = addresses.free_port("127.0.0.1")  # explicit: one try, no retry on another port
    with pytest.raises(TierError) as info:
        spawn.start(1, 1, port=port, timeout=30, env_extra={"HVD_PS_LOG_LEVEL": "LOUD"})
    # both children reject the bad variable; the error names the first seen dead
    assert re.fullmatch(
        rf"PS (scheduler|server 0) \(pid \d+\) exited with code 1 while starting "
        rf"\(scheduler port 127.0.0.1:{port}\)",
        str(info.value),
    ), str(info.value)
    assert time.monotonic() - started < 30
