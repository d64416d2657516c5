"""Child processes of :mod:`hvd_ps.launch.spawn` and :mod:`hvd_ps.launch.cli`: tied to their parent,
how one ended, and how one is stopped with its whole process group.

Each child is started with ``start_new_session=True`` (so it leads a process group whose id
is its PID) and ``preexec_fn=die_with_parent``.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import time
from typing import Dict, List, Mapping, Optional, Sequence

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that forked it exits
    (``prctl(PR_SET_PDEATHSIG)``). For ``preexec_fn``: it runs in the child before exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def remote_command(
    ssh: Sequence[str], host: str, env: Dict[str, str], python: str, cwd: str,
    args: Sequence[str],
) -> List[str]:  # fmt: skip
    """The command that runs ``python ARGS`` on ``host`` over the remote shell ``ssh``, in
    ``cwd`` where it exists there, with ``env`` set; every word is quoted for the remote
    shell."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    words = " ".join(shlex.quote(a) for a in args)
    script = f"cd {shlex.quote(cwd)} 2>/dev/null; exec env {assigns} {shlex.quote(python)} {words}"
    return [*ssh, host, script]


def how_ended(returncode: int) -> str:
    """``"exited with code N"`` for a return code N >= 0; ``"was killed by signal N"`` for -N,
    which is how :mod:`subprocess` reports a death by signal N."""
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def ended(name: str, proc: subprocess.Popen[bytes]) -> Optional[str]:
    """``"<name> (pid P) <how it ended>"`` once ``proc`` has ended, None while it runs (it is
    reaped here if it has just ended)."""
    code = proc.poll()
    if code is None:
        return None
    return f"{name} (pid {proc.pid}) {how_ended(code)}"


def first_ended(procs: Mapping[str, subprocess.Popen[bytes]]) -> Optional[str]:
    """:func:`ended` (``"PS <name> ..."``) of the first of ``procs`` that has ended; None while
    all run."""
    for name, proc in procs.items():
        what = ended(f"PS {name}", proc)
        if what is not None:
            return what
    return None


def wait_then_stop(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """Give ``procs`` up to ``grace`` seconds in all to exit by themselves, then stop their
    process groups (:func:`stop_groups`: 2 s after SIGTERM, 2 s after SIGKILL)."""
    end = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    stop_groups(list(procs), grace=2.0, kill_wait=2.0)


def _members(pgid: int) -> List[int]:
    """PIDs of the processes in group ``pgid`` that are not zombies (read from ``/proc``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # it ended meanwhile
            continue
        # after the command name in parentheses (which may hold anything): state, ppid, pgrp
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def _gone(proc: subprocess.Popen[bytes]) -> bool:
    """True when ``proc`` has ended (it is reaped) and its group holds no live process."""
    if proc.poll() is None:
        return False
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):  # no such group, or not one of ours
        return True
    return not _members(proc.pid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(
    procs: Sequence[subprocess.Popen[bytes]], grace: float, kill_wait: float = 5.0
) -> bool:
    """Stop each child in ``procs`` and every other process of its group (group id = its PID).

    SIGTERM goes to every group that still holds a live process; after up to ``grace`` seconds
    for them all to be gone, SIGKILL goes to the groups left, which get up to ``kill_wait``
    seconds more. A group whose leader has already ended is stopped the same way (its
    leftovers, e.g. the ranks of a killed ``mpirun``). The children are reaped; a zombie in a
    group counts as gone. Returns True when every group is gone.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        left = [p for p in procs if not _gone(p)]
        if not left:
            return True
        for p in left:
            _signal_group(p.pid, sig)
        end = time.monotonic() + wait
        while not all(_gone(p) for p in left) and time.monotonic() < end:
            time.sleep(0.05)
    return all(_gone(p) for p in procs)
