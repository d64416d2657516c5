"""Running a whole job (a script that starts horovodrun) from a test: bounded, and nothing left.

The job runs in a session of its own with a marker in its environment, which every process it
starts inherits (horovodrun, mpirun, the ranks, the embedded PS servers). After it ends — or is
killed at the timeout — no process carrying the marker may remain; any found is killed by PID
and the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "HVD_PS_TEST_JOB"  # the marker's name; its value is unique to one run


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is as good as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def env(marker: str, **extra: str) -> dict:
    """The caller's environment for a job: this venv first on PATH, the embedded tier, a
    one-minute bound on every hvd_ps wait, one thread per rank, the marker."""
    e = dict(os.environ)
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
    e.update(
        OMP_NUM_THREADS="1",
        MXNET_CPU_WORKER_NTHREADS="1",
        OMPI_MCA_mpi_yield_when_idle="1",  # more ranks than cores
        HVD_PS_TIMEOUT="60",
    )
    e[MARK] = marker
    for k in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_ROLE"):
        e.pop(k, None)  # the embedded tier, not one configured elsewhere
    if os.geteuid() == 0:
        e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e.update(extra)
    return e


def marked(marker: str) -> List[psutil.Process]:
    """Live processes whose environment carries ``marker``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(MARK) == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap(marker: str, wait: float = 20.0) -> List[int]:
    """Give the job's processes ``wait`` s to exit, then kill (by PID) any still carrying
    ``marker``; return their PIDs (empty: nothing was left)."""
    deadline = time.monotonic() + wait
    left = marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = marked(marker)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in left]


def run(
    cmd: List[str], job_env: dict, timeout: float, cwd: Optional[Path] = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion within ``timeout`` s; fail the test if it overruns or leaves
    any process behind."""
    marker = job_env[MARK]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd or ROOT,
        env=job_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish in {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        pids = reap(marker)
        assert not pids, f"{cmd} left processes running (killed now): {pids}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
