"""hvd_ps.launch.processes: how a child ended, in the words of every error message, and the stop of
a child's whole process group (SIGTERM, a bounded grace, SIGKILL), on real processes.

Every process a test starts is ended by its PID in a ``finally`` if the test leaves it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import job_run  # tests/job_run.py
import pytest

from hvd_ps.launch import processes

ROOT = Path(__file__).resolve().parents[2]

#: a leader that ignores SIGTERM and starts a member of its group that ignores it too (an
#: ignored signal stays ignored across exec)
IGNORES_SIGTERM = (
    "import signal, subprocess, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "member = subprocess.Popen(['sleep', '60'])\n"
    "print(member.pid, flush=True)\n"
    "time.sleep(60)\n"
)
#: the same with SIGTERM's default action (the process ends)
ENDS_ON_SIGTERM = (
    "import subprocess, time\n"
    "member = subprocess.Popen(['sleep', '60'])\n"
    "print(member.pid, flush=True)\n"
    "time.sleep(60)\n"
)
#: a leader that exits at once, leaving the member behind in its group
LEAVES_A_MEMBER = (
    "import signal, subprocess\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "member = subprocess.Popen(['sleep', '60'])\n"
    "print(member.pid, flush=True)\n"
)


@pytest.fixture
def started() -> Iterator[List[int]]:
    """PIDs the test started; any still alive at its end is SIGKILLed by PID."""
    pids: List[int] = []
    yield pids
    for pid in pids:
        if job_run.alive(pid):
            os.kill(pid, signal.SIGKILL)


def _group(code: str, pids: List[int]) -> Tuple[subprocess.Popen, int]:
    """Start ``code`` as the leader of a new process group; returns it and its member's PID."""
    leader = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pids.append(leader.pid)
    assert leader.stdout is not None
    ready, _, _ = select.select([leader.stdout], [], [], 30)
    assert ready, "the leader did not print its member's PID within 30 s"
    member = int(leader.stdout.readline())
    pids.append(member)
    leader.stdout.close()
    assert os.getpgid(member) == leader.pid
    return leader, member


def _gone_within(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while job_run.alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not job_run.alive(pid)


@pytest.mark.parametrize(
    "code, text",
    [
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-9, "was killed by signal 9"),
        (-15, "was killed by signal 15"),
    ],
)
def test_how_ended(code: int, text: str) -> None:
    assert processes.how_ended(code) == text


def test_ended_describes_a_real_exit_and_a_real_kill(started: List[int]) -> None:
    exits = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    started.append(exits.pid)
    exits.wait(timeout=30)
    assert (
        processes.ended("PS scheduler", exits)
        == f"PS scheduler (pid {exits.pid}) exited with code 4"
    )
    sleeper = subprocess.Popen(["sleep", "60"])
    started.append(sleeper.pid)
    assert processes.ended("PS server 1", sleeper) is None  # still running
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait(timeout=30)
    assert (
        processes.ended("PS server 1", sleeper)
        == f"PS server 1 (pid {sleeper.pid}) was killed by signal 9"
    )


def test_stop_groups_kills_a_group_that_ignores_sigterm(started: List[int]) -> None:
    leader, member = _group(IGNORES_SIGTERM, started)
    t0 = time.monotonic()
    assert processes.stop_groups([leader], grace=0.5, kill_wait=5.0) is True
    took = time.monotonic() - t0
    assert 0.5 <= took < 3.0, took  # the whole grace, then SIGKILL ends it at once
    assert leader.returncode == -signal.SIGKILL
    assert _gone_within(member, 5.0)  # a zombie until its new parent reaps it


def test_stop_groups_ends_a_group_on_sigterm_without_the_grace(started: List[int]) -> None:
    leader, member = _group(ENDS_ON_SIGTERM, started)
    second, other = _group(ENDS_ON_SIGTERM, started)
    t0 = time.monotonic()
    assert processes.stop_groups([leader, second], grace=20.0) is True
    assert time.monotonic() - t0 < 5.0  # returns when the groups are gone, not after 20 s
    assert leader.returncode == second.returncode == -signal.SIGTERM
    assert _gone_within(member, 5.0) and _gone_within(other, 5.0)


def test_stop_groups_ends_what_an_exited_leader_left(started: List[int]) -> None:
    leader, member = _group(LEAVES_A_MEMBER, started)
    assert leader.wait(timeout=30) == 0
    assert job_run.alive(member)  # it ignores SIGTERM: only the SIGKILL after the grace ends it
    t0 = time.monotonic()
    assert processes.stop_groups([leader], grace=0.3, kill_wait=5.0) is True
    assert 0.3 <= time.monotonic() - t0 < 3.0
    assert not job_run.alive(member)
    assert leader.returncode == 0  # the leader's own exit code is kept


def test_stop_groups_of_finished_children_returns_at_once(started: List[int]) -> None:
    done = subprocess.Popen(["true"], start_new_session=True)
    started.append(done.pid)
    done.wait(timeout=30)
    t0 = time.monotonic()
    assert processes.stop_groups([done], grace=10.0) is True
    assert time.monotonic() - t0 < 1.0 and done.returncode == 0


def test_die_with_parent(started: List[int]) -> None:
    parent_code = (
        "import subprocess\n"
        "from hvd_ps.launch import processes\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=processes.die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    started.append(parent.pid)
    assert parent.stdout is not None
    ready, _, _ = select.select([parent.stdout], [], [], 30)
    assert ready, "the parent did not print its child's PID within 30 s"
    child = int(parent.stdout.readline())
    started.append(child)
    parent.stdout.close()
    assert job_run.alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    assert parent.wait(timeout=30) == -signal.SIGKILL
    assert _gone_within(child, 5.0)  # the kernel killed it with its parent
