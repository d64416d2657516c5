"""The shared harness of the tests that run whole jobs: bounded, and nothing left.

* :func:`env`: the environment of a job: the caller's, without an outer launch's variables
  (``DMLC_*``, ``HVD_PS_*``, ``HOROVOD_*``, an MPI rank's ``OMPI_COMM_*``/``PMIX_*``), with this
  venv first on ``PATH``, the repository on ``PYTHONPATH``, one thread per rank, a one-minute
  bound on every hvd_ps wait and a marker (below);
* commands: :func:`bounded` (under ``timeout -k``), :func:`mpirun`, :func:`launcher`
  (``python -m hvd_ps.launch``, what ``hvdps-run`` calls), :func:`program` (a job program of
  tests/jobs/programs);
* running: :func:`run` (to completion, then nothing of it may be left), :func:`complete` (to
  completion), :func:`start` and :func:`finish` / :func:`finish_all` (jobs in the background,
  then their output), :func:`read_until` (a line of a running job), :func:`kill`;
* what is left: :func:`alive`, :func:`reap` (by marker), :func:`assert_gone` (by PID and by a
  token in the command line);
* :class:`Tier`: a ``hvdps-run --servers-only`` tier that several jobs share.

A job started with :func:`env`'s environment carries a marker unique to it, which every
process it starts inherits (horovodrun, mpirun, the ranks, the embedded PS servers). After
:func:`run`'s job ends — or is killed at the timeout — no process carrying the marker may
remain; any found is killed by PID and the test fails. Every wait here is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "jobs" / "programs"  # the job programs the tests launch
BIN = str(Path(sys.executable).parent)  # this venv's bin: horovodrun, hvdps-run, mpirun
MARK = "HVD_PS_TEST_JOB"  # the marker's name; its value is unique to one run
#: the variables of an outer launch that must not reach a job started here
OUTER = ("DMLC_", "HVD_PS_", "HOROVOD_", "OMPI_COMM", "PMIX_")


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


def env(marker: Optional[str] = None, **extra: str) -> Dict[str, str]:
    """The caller's environment for a job (see the module's docstring); ``extra`` last.

    ``marker`` tags the job's processes for :func:`reap` (a fresh one if not given)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(OUTER)}
    e["PATH"] = os.pathsep.join([BIN, e.get("PATH", "/usr/bin:/bin")])
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.update(
        OMP_NUM_THREADS="1",
        MXNET_CPU_WORKER_NTHREADS="1",
        OMPI_MCA_mpi_yield_when_idle="1",  # more ranks than cores
        HVD_PS_TIMEOUT="60",
    )
    e[MARK] = marker or f"job-{uuid.uuid4().hex}"
    if os.geteuid() == 0:
        e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e.update(extra)
    return e


# -- commands ------------------------------------------------------------------------------


def bounded(cmd: List[str], limit: float) -> List[str]:
    """``cmd`` under ``timeout -k 5 limit`` (SIGTERM at ``limit`` s, SIGKILL 5 s later)."""
    return ["timeout", "-k", "5", f"{limit:g}", *cmd]


def mpirun(ranks: int, *argv: str) -> List[str]:
    """``argv`` on ``ranks`` local ranks (more ranks than cores, no binding)."""
    return ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *argv]


def program(name: str, *args: str) -> List[str]:
    """This Python running the job program ``tests/jobs/programs/<name>`` with ``args``."""
    return [sys.executable, str(PROGRAMS / name), *args]


def launcher(*args: str) -> List[str]:
    """``python -m hvd_ps.launch ARGS``: what the ``hvdps-run`` console script calls."""
    return [sys.executable, "-m", "hvd_ps.launch", *args]


# -- running -------------------------------------------------------------------------------


def start(
    cmd: List[str], job_env: Dict[str, str], cwd: Optional[Path] = None, merge: bool = False
) -> subprocess.Popen:
    """``cmd`` in a session of its own (killed as one group), its output piped as text;
    ``merge``: its stderr into its stdout."""
    return subprocess.Popen(
        cmd,
        cwd=cwd or ROOT,
        env=job_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> Tuple[str, str]:
    """``proc``'s (stdout, stderr) once it ends; if it has not ended within ``timeout`` s its
    whole process group is killed and the test fails with what it printed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a process outside its group holds its pipes
            out, err = "", ""
        err = err or ""
        pytest.fail(f"{proc.args} did not finish in {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    return out, err or ""


def kill(procs: Iterable[subprocess.Popen]) -> None:
    """SIGKILL the process group of each of ``procs`` still running (each was started in a
    session of its own), and wait for it."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def finish_all(procs: List[subprocess.Popen], timeout: float) -> List[Tuple[int, str, str]]:
    """Each of ``procs``' (exit code, stdout, stderr), in turn, each within ``timeout`` s (see
    :func:`finish`); any still running when one fails is killed."""
    try:
        results = []
        for p in procs:
            out, err = finish(p, timeout)
            results.append((p.returncode, out, err))
        return results
    finally:
        kill(procs)


def complete(
    cmd: List[str],
    job_env: Dict[str, str],
    timeout: float,
    cwd: Optional[Path] = None,
    merge: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (:func:`start`) to completion within ``timeout`` s (:func:`finish`)."""
    proc = start(cmd, job_env, cwd, merge)
    out, err = finish(proc, timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run(
    cmd: List[str], job_env: Dict[str, str], timeout: float, **options: Any
) -> subprocess.CompletedProcess:
    """:func:`complete` (``options``: its ``cwd`` and ``merge``), and fail the test if the job
    left any process carrying its marker (``job_env`` is :func:`env`'s) behind."""
    try:
        return complete(cmd, job_env, timeout, **options)
    finally:
        pids = reap(job_env[MARK])
        assert not pids, f"{cmd} left processes running (killed now): {pids}"


def read_until(proc: subprocess.Popen, pattern: str, limit: float = 90.0) -> str:
    """Read ``proc``'s stdout until a line matches ``pattern``; returns what was read. Fails
    the test if none does within ``limit`` s or before the output ends."""
    seen: List[str] = []
    end = time.monotonic() + limit
    assert proc.stdout is not None
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    pytest.fail(f"no line matching {pattern!r} within {limit} s:\n{''.join(seen)}")


# -- what is left --------------------------------------------------------------------------


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


def with_token(token: str) -> List[int]:
    """Live PIDs (not this one) whose command line holds ``token`` (a job's ranks carry one,
    e.g. its out directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if token in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return [p for p in found if p != os.getpid() and alive(p)]


def assert_gone(pids: Iterable[int], token: Optional[str] = None, within: float = 15.0) -> None:
    """Within ``within`` s (0: now), none of ``pids`` and no process with ``token`` in its
    command line may be alive; fails the test naming those left."""
    pids = list(pids)
    end = time.monotonic() + within
    while True:
        left = [p for p in pids if alive(p)] + (with_token(token) if token else [])
        if not left:
            return
        if time.monotonic() >= end:
            pytest.fail(f"processes left behind: {left}")
        time.sleep(0.2)


def pidfile_pids(pidfile: Path) -> List[int]:
    """The PIDs hvdps-run's ``--pidfile`` lists (one ``PID NAME`` line per PS process)."""
    return [int(line.split()[0]) for line in pidfile.read_text().splitlines()]


# -- a shared tier -------------------------------------------------------------------------


def exports(text: str) -> Dict[str, str]:
    """The ``export NAME=VALUE`` lines of ``hvdps-run --servers-only``'s output."""
    return dict(re.findall(r"^export (\w+)=(\S+)$", text, re.M))


class Tier:
    """``hvdps-run --servers-only`` for ``workers`` groups (``timeout``-bounded, in a session
    of its own): its process, the exports it printed, its PS PIDs. ``env`` adds to its
    environment (:func:`env`'s, with ``HVD_PS_TIMEOUT`` 30 s), ``args`` to its flags."""

    def __init__(
        self, tmp: Path, workers: int, limit: float = 240, args: Sequence[str] = (),
        **env_extra: str,
    ) -> None:  # fmt: skip
        self.pidfile = tmp / "tier.pids"
        cmd = launcher("--servers-only", "--num-workers", str(workers), "--pidfile",
                       str(self.pidfile), *args)  # fmt: skip
        self.proc = start(bounded(cmd, limit), env(**{"HVD_PS_TIMEOUT": "30", **env_extra}))
        try:
            self.exports = exports(read_until(self.proc, r"^# and in each job", limit=60))
        except BaseException:
            kill([self.proc])
            raise

    def pids(self) -> List[int]:
        return pidfile_pids(self.pidfile)

    def stop(self) -> int:
        """SIGINT (what a user types), then the exit code; everything it started is gone."""
        pids = self.pids()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # the timeout wrapper passes it on
        try:
            self.proc.communicate(timeout=30)
        finally:
            kill([self.proc])
        assert_gone(pids)
        return self.proc.returncode
