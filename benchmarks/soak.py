"""Soak: thousands of async exchanges on one shared tier while one group keeps dying and
rejoining; the servers' memory over time and every update accounted for. A short run is in
the test suite (tests/jobs/test_soak.py).

Three jobs share one ``hvdps-run --servers-only --num-workers 3`` tier (loopback, servers
auditing every update: ``HVD_PS_AUDIT_DIR``). Every job sleeps a random ``0..--jitter`` s each
step. Groups 0 and 1 train for the whole soak; group 2 is one job after another, each
rejoining the tier (hvd_ps's scheduler takes any number of node recoveries) and running up to
``--restart-every`` exchanges: every other job leaves cleanly at the end, the others are killed
with SIGKILL at a random exchange. Meanwhile the PS processes' resident memory is sampled every
second. At the end the servers' audit is checked (the job is
tests/jobs/programs/rejoin_job.py):

* ``lost``: updates whose "before" is not the previous update's "after" (an update applied
  outside the audit, or one lost between two), must be 0;
* ``unaccounted``: applied updates beyond what the jobs counted as pushed; only a killed
  job's last push may land uncounted, so it must lie in ``0 .. kills``; fewer applied than
  pushed would be a lost push;
* the memory of each PS process: first, peak and last sample (bounded: no growth with rounds);
* every group finite and alive: a job that fails (a clean job of group 2, or group 0 or 1)
  is a line of the result (its group, exit code and last error line), never a traceback of
  the soak; the global model every finished job pulled at its end must be finite.

The soak always ends with a job of group 2 that leaves cleanly (after a killed one it runs one
more), so the tier's verdict never depends on where the time ran out.

Usage::

    python -m benchmarks.soak [--minutes 5] [--strategy EASGD] [--restart-every 300]

Writes benchmarks/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
JOB = str(ROOT / "tests" / "jobs" / "programs" / "rejoin_job.py")
RESULTS = ROOT / "benchmarks" / "results"


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMLC_", "HVD_PS_"))}
    env.update(
        PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        MXNET_CPU_WORKER_NTHREADS="1",
        OMPI_MCA_mpi_yield_when_idle="1",  # more processes than cores
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        HVD_PS_TIMEOUT="60",
    )
    env.update(extra)
    return env


def _start(cmd: List[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def kill_job(job: subprocess.Popen, out: Path, tag: str) -> None:
    """SIGKILL a whole job of tests/jobs/programs/rejoin_job.py: its session and its ranks (mpirun
    gives them process groups of their own), found by their command line (the job's out dir
    and tag), killed by PID. Used by tests/jobs/test_rejoin.py too."""
    ranks = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if JOB in (p.info["cmdline"] or []) and str(out) in p.info["cmdline"]
        and tag in p.info["cmdline"]
    ]  # fmt: skip
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it had ended by itself
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(timeout=30)


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _sample(pids: Dict[str, int], samples: List, stop: threading.Event, start: float) -> None:
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    while not stop.is_set():
        row = {"t": round(time.monotonic() - start, 1)}
        for name, p in procs.items():
            try:
                row[name] = p.memory_info().rss / 2**20
            except psutil.Error:
                row[name] = float("nan")
        samples.append(row)
        stop.wait(1.0)


def last_error(log: str) -> str:
    """The line of a job's output that says why it failed: the last line naming an error (an
    hvd_ps error line, a Python exception), else the last line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"hvd_ps: |Error\b|Error:|error:", line):
            return line
    return lines[-1] if lines else "(no output)"


def failure(gid: int, tag: str, code: int, log_path: Path) -> Dict[str, object]:
    """A failed job as a line of the result."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as err:
        text = f"(no log: {err})"
    return {"group": gid, "job": tag, "exit_code": code, "last_error": last_error(text)}


def verdict(
    audit: Dict[str, int],
    unaccounted: int,
    kills: int,
    failures: List,
    tier_code: int,
    finite: bool,
) -> bool:
    """Whether the soak passed: nothing lost, every applied update accounted for (a killed
    job's last push may land uncounted), no job failed, the tier left cleanly, all finite."""
    return (audit["lost"] == 0 and 0 <= unaccounted <= kills and not failures
            and tier_code == 0 and finite)  # fmt: skip


def _check_audit(directory: Path) -> Dict[str, int]:
    lines = []
    for f in directory.glob("server-*.jsonl"):
        lines += [json.loads(line) for line in f.read_text().splitlines()]
    lines = [ln for ln in lines if ln["key"] == 0]
    lost = sum(
        1 for prev, ln in zip(lines, lines[1:])
        if not np.array_equal(np.float32(prev["after"]), np.float32(ln["before"]))
    )  # fmt: skip
    return {"applied": len(lines), "lost": lost}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--strategy", default="EASGD", choices=["EASGD", "DiLoCo", "GradientPush"])
    ap.add_argument("--restart-every", type=int, default=300, help="exchanges of a group-2 job")
    ap.add_argument("--jitter", type=float, default=0.02, help="largest random delay per step")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hvd_ps_soak."))
    audit, stop_file = work / "audit", work / "stop"
    tier_env = _env(HVD_PS_AUDIT_DIR=str(audit), HVD_PS_HEARTBEAT="4")
    tier = subprocess.Popen(
        [sys.executable, "-m", "hvd_ps.launch", "--servers-only", "--num-workers", "3",
         "--pidfile", str(work / "tier.pids")],
        env=tier_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(work / "tier.log", "w"),
        text=True, start_new_session=True,
    )  # fmt: skip
    text = ""
    assert tier.stdout is not None
    while "# and in each job" not in text:
        line = tier.stdout.readline()
        if not line:
            raise SystemExit(f"the tier printed no exports: {text}")
        text += line
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", text, re.M))
    pids = {ln.split(" ", 1)[1].strip(): int(ln.split()[0])
            for ln in (work / "tier.pids").read_text().splitlines()}  # fmt: skip
    samples: List[Dict] = []
    stop = threading.Event()
    start = time.monotonic()
    sampler = threading.Thread(target=_sample, args=(pids, samples, stop, start), daemon=True)
    sampler.start()

    def job(gid: int, tag: str, *stop_args: str) -> subprocess.Popen:
        cmd = [
            "horovodrun",
            "-np",
            "1",
            sys.executable,
            JOB,
            str(work),
            args.strategy,
            tag,
            "--jitter",
            str(args.jitter),
            "--limit",
            str(args.minutes * 60 + 300),
            *stop_args,
        ]
        env = _env(HVD_PS_GROUP_OFFSET=str(gid), **exports)
        return _start(cmd, env, work / f"{tag}.log")  # fmt: skip

    steady = [job(g, f"G{g}", "--until", str(stop_file)) for g in (0, 1)]
    rng = np.random.RandomState(0)
    per_step = 1 if args.strategy == "GradientPush" else 2  # steps per exchange
    kills, killed, finished, failures = 0, 0, [], []
    last_killed = False
    # the last job of group 2 always leaves cleanly: a killed one is followed by one more
    while (time.monotonic() < start + args.minutes * 60 or last_killed) and not failures:
        if any(p.poll() is not None for p in steady):  # group 0 or 1 ended early: stop here
            break
        jobs_of_2 = kills + len(finished) + len(failures)
        tag = f"C{jobs_of_2}"
        c = job(2, tag, "--steps", str(args.restart_every * per_step))
        last_killed = jobs_of_2 % 2 == 1  # every other job: SIGKILL at a random exchange
        if last_killed:
            target = int(rng.randint(args.restart_every // 4, args.restart_every))
            while _count(work / f"{tag}.count") < target and c.poll() is None:
                time.sleep(0.05)
            if c.poll() not in (None, 0):  # it failed before the kill
                failures.append(failure(2, tag, int(c.returncode), work / f"{tag}.log"))
                break
            kill_job(c, work, tag)
            kills += 1
            killed += _count(work / f"{tag}.count")
        else:  # the others leave when done
            code = c.wait(timeout=args.minutes * 60 + 300)
            if code != 0:
                failures.append(failure(2, tag, code, work / f"{tag}.log"))
            else:
                finished.append(tag)
    stop_file.touch()
    codes = [p.wait(timeout=300) for p in steady]
    for gid, code in enumerate(codes):
        if code != 0:
            failures.append(failure(gid, f"G{gid}", code, work / f"G{gid}.log"))
    try:
        tier.wait(timeout=120)
    except subprocess.TimeoutExpired:  # the tier waits for groups that are gone: stop it
        os.killpg(tier.pid, signal.SIGTERM)
        tier.wait(timeout=60)
    stop.set()
    sampler.join()
    took = time.monotonic() - start
    done = [t for t, code in zip(("G0", "G1"), codes) if code == 0] + finished
    results = {t: np.load(work / f"{t}.rank0.npz") for t in done}
    pushed = killed + sum(int(r["exchanges"]) for r in results.values())
    finite = all(np.isfinite(r["glob"]).all() for r in results.values())
    jobs_of_2 = kills + len(finished) + sum(1 for f in failures if f["group"] == 2)
    audit_result = _check_audit(audit)
    unaccounted = audit_result["applied"] - pushed
    warm = next((s for s in samples if s["t"] >= 10), samples[-1])  # imports done
    memory = {
        name: {"first_mb": warm[name], "peak_mb": max(s[name] for s in samples),
               "last_mb": samples[-1][name]}
        for name in pids
    }  # fmt: skip
    report = {
        "strategy": args.strategy,
        "seconds": round(took, 1),
        "jobs_of_group_2": jobs_of_2,
        "kills": kills,
        "exchanges_pushed": pushed,
        "updates_applied": audit_result["applied"],
        "lost": audit_result["lost"],
        "unaccounted": unaccounted,
        "finite": finite,
        "failures": failures,
        "ok": verdict(audit_result, unaccounted, kills, failures, tier.returncode, finite),
        "exit_codes": codes,
        "tier_exit_code": tier.returncode,
        "memory": memory,
        "samples": samples,
        "tier_log": (work / "tier.log").read_text().splitlines()[-20:],
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    rows = "\n".join(
        f"| {n} | {m['first_mb']:.0f} | {m['peak_mb']:.0f} | {m['last_mb']:.0f} |"
        for n, m in memory.items()
    )
    md = (
        f"Soak ({args.strategy}, async, 3 groups, {took / 60:.1f} min, random delays up to "
        f"{args.jitter:g} s per step): {jobs_of_2} jobs of group 2 in turn, each rejoining "
        f"the tier and running up to {args.restart_every} exchanges, every other one killed "
        f"with SIGKILL at a random exchange ({kills} kills); {pushed} exchanges pushed, "
        f"{audit_result['applied']} updates applied by the servers, lost "
        f"{audit_result['lost']}, unaccounted {unaccounted} (a killed job's last push may "
        f"land: 0..{kills}); exit codes of groups 0 and 1: {codes}, tier {tier.returncode}; "
        f"global models {'finite' if finite else 'NOT FINITE'}.\n\n"
        + "".join(
            f"FAILED: group {f['group']} (job {f['job']}) exited {f['exit_code']}: "
            f"{f['last_error']}\n"
            for f in failures
        )
        + ("\n" if failures else "")
        + "| PS process | RSS at 10 s (MB) | peak (MB) | last (MB) |\n|---|---|---|---|\n"
        + rows
        + "\n"
    )
    (out / "soak.md").write_text(md)
    print(md)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
