"""Async groups that die and rejoin a shared tier, with nothing lost and nothing applied twice.

Three ``horovodrun`` jobs, one async group each, share one ``hvdps-run --servers-only
--num-workers 3`` tier (tests/jobs/programs/rejoin_job.py): A and B (one rank each) train until
told to stop; C (two ranks, one group) is killed with SIGKILL after a few exchanges and started
again. What a user relies on, checked for EASGD, DiLoCo and GradientPush:

* the tier prints a line naming the dead group, keeps serving, and lets the restarted job take
  its place; the survivors never stall (their shutdown takes seconds) and exit 0, and so does
  the tier once every group has left; after C's restarted job leaves, a third job of that
  group (of one rank) rejoins too: a second node recovery, which ps-lite's own scheduler
  would abort at (the tier runs hvd_ps's, :mod:`hvd_ps.ps.scheduler`);
* each restarted group's first parameters (on both ranks of the first) are a state of the PS
  (an exact value the servers held), not its initial parameters;
* the servers' audit (``HVD_PS_AUDIT_DIR``: every applied update with the value before and
  after) forms one unbroken chain from the initial value, each step equal to the strategy's
  rule replayed in numpy (EASGD ``c += d``; DiLoCo's delayed Nesterov outer step; GradientPush's
  SGD with the learning rate / G),
  so the final value is the initial one plus every update applied; and the servers applied as
  many updates as the groups pushed (the killed job's last push may or may not have arrived).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List

import job_run
import numpy as np
import pytest
import reference as ref

from benchmarks.soak import kill_job

LR = 0.1  # the jobs' local (and GradientPush's server) learning rate
GROUPS = 3  # groups on the tier (A, B and C's jobs)
DEAD_AFTER = "4"  # HVD_PS_HEARTBEAT: seconds of silence before ps-lite counts a node dead


def _job(out: Path, np_: int, offset: int, strategy: str, tag: str, *stop: str, **env: str):
    job = job_run.program("rejoin_job.py", str(out), strategy, tag, *stop)
    cmd = ["horovodrun", "-np", str(np_), *job]
    job_env = job_run.env(HVD_PS_TIMEOUT="30", HVD_PS_GROUP_OFFSET=str(offset), **env)
    return job_run.start(job_run.bounded(cmd, 170), job_env)


def _wait_for(what: str, check, limit: float, procs: List) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.1)
    outs = [p.communicate(timeout=20) if p.poll() is not None else ("", "") for p in procs]
    job_run.kill(procs)
    pytest.fail(f"{what} did not happen: {outs}")


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _audit(directory: Path) -> List[Dict]:
    lines = []
    for f in directory.glob("server-*.jsonl"):
        lines += [json.loads(line) for line in f.read_text().splitlines()]
    return [line for line in lines if line["key"] == 0]  # the trainer's one key


def _replay(strategy: str, before: np.ndarray, received: np.ndarray, state: Dict) -> np.ndarray:
    """The servers' rule of the async strategy, in numpy (float32, as the servers compute)."""
    if strategy == "EASGD":
        return before + received  # c += d
    if strategy == "GradientPush":  # SGD, no momentum; async: lr / G per push
        return before - np.float32(LR / GROUPS) * received
    # DiLoCo's outer step, async: each push 1/G of a round, the momentum once per G pushes
    outer = state.setdefault("outer", ref.OuterSGD(0.7, 0.9, True, 1.0 / GROUPS, GROUPS))
    return outer.step(before, received)


def _x0() -> np.ndarray:
    """The initial parameters in the layout of the fused buffer (name order: bias, weight)."""
    w0, b0 = ref.initial()
    return np.concatenate([b0, w0.ravel()]).astype(np.float32)


@pytest.mark.parametrize(
    "strategy, wire",
    [("EASGD", "float32"), ("DiLoCo", "float32"), ("GradientPush", "float32"), ("DiLoCo", "int8")],
)
def test_a_dead_async_group_rejoins_and_nothing_is_lost(
    tmp_path: Path, strategy: str, wire: str
) -> None:
    audit = tmp_path / "audit"
    done = tmp_path / "done"
    tier = job_run.Tier(tmp_path, 3, HVD_PS_AUDIT_DIR=str(audit), HVD_PS_HEARTBEAT=DEAD_AFTER)
    jobs = []
    try:
        ex = dict(tier.exports, HVD_PS_WIRE_DTYPE=wire)
        a = _job(tmp_path, 1, 0, strategy, "A", "--until", str(done), **ex)
        b = _job(tmp_path, 1, 1, strategy, "B", "--until", str(done), **ex)
        c1 = _job(tmp_path, 2, 2, strategy, "C1", "--until", str(tmp_path / "never"), **ex)
        jobs = [a, b, c1]
        _wait_for("C1's third exchange", lambda: _count(tmp_path / "C1.count") >= 3, 120, jobs)
        kill_job(c1, tmp_path, "C1")
        killed_at = _count(tmp_path / "C1.count")
        before_rejoin = _count(tmp_path / "A.count")
        c2 = _job(tmp_path, 2, 2, strategy, "C2", "--steps", "12", **ex)
        jobs.append(c2)
        results = {"C2": job_run.finish_all([c2], 150)[0]}
        # C2 left; a third job of group 2 (one rank now) takes its place: a second recovery
        c3 = _job(tmp_path, 1, 2, strategy, "C3", "--steps", "6", "--done", str(done), **ex)
        jobs.append(c3)
        results["C3"] = job_run.finish_all([c3], 150)[0]
        results.update({n: job_run.finish_all([j], 150)[0] for n, j in zip("AB", (a, b))})
        for name, (code, so, se) in results.items():
            assert code == 0, f"{name}: {so}{se[-3000:]}"
        rejoined = "hvd_ps: group 2 rejoins the PS tier and starts from the PS's state; waiting"
        assert rejoined in results["C2"][2], results["C2"][2][-3000:]
        assert "rejoins" not in results["A"][2], results["A"][2][-3000:]
        _, tier_err = tier.proc.communicate(timeout=60)  # it ends by itself
        assert tier.proc.returncode == 0, tier_err
    finally:
        job_run.kill(jobs)
        tier.stop()
    job_run.assert_gone([], token=str(tmp_path))
    assert "hvdps-run: group 2 died: its leader (pid " in tier_err, tier_err
    assert "keeps serving the other groups ([0, 1])" in tier_err, tier_err
    assert "group 2 rejoins the tier (it had died)" in tier_err, tier_err
    assert "all 3 groups have left; stopping the PS tier" in tier_err, tier_err
    assert "group 2 rejoins the tier (it had left)" in tier_err, tier_err
    assert _count(tmp_path / "A.count") > before_rejoin, "A stalled while C was dead"

    got = {t: dict(np.load(tmp_path / f"{t}.rank0.npz")) for t in ("A", "B", "C2", "C3")}
    c2_member = dict(np.load(tmp_path / "C2.rank1.npz"))
    for name, r in got.items():  # leaving takes no barrier with the dead or the others
        assert float(r["shutdown_s"]) < 5.0, f"{name}'s shutdown took {r['shutdown_s']} s"

    if wire != "float32":
        _check_compressed(audit, got, c2_member, killed_at)
        return
    lines = _audit(audit)
    x0 = _x0()
    assert lines, "the servers applied no update"
    states = [np.array(lines[0]["before"], np.float32)]
    replay: Dict = {}
    for i, line in enumerate(lines):
        before, after = np.array(line["before"], np.float32), np.array(line["after"], np.float32)
        np.testing.assert_array_equal(before, states[-1], err_msg=f"update {i}: chain broken")
        want = _replay(strategy, before, np.array(line["received"], np.float32), replay)
        np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-6, err_msg=f"update {i}")
        states.append(after)
    np.testing.assert_allclose(states[0], x0, rtol=1e-6, err_msg="the PS did not start at x0")
    if strategy == "EASGD":  # the centre = its start plus every update the servers applied
        total = sum(np.array(line["received"], np.float64) for line in lines)
        np.testing.assert_allclose(states[-1], x0 + total, rtol=1e-5, atol=1e-5)

    np.testing.assert_array_equal(got["C2"]["first"], c2_member["first"])  # the group agrees
    for tag in ("C2", "C3"):
        first = got[tag]["first"]
        assert not np.allclose(first, x0, atol=1e-4), f"{tag} started from x0"
        gap = min(float(np.max(np.abs(first - s))) for s in states)
        assert gap < 1e-6, f"{tag}'s first parameters are no state of the PS ({gap:.2e} off)"

    pushed = sum(int(got[t]["exchanges"]) for t in ("A", "B", "C2", "C3"))
    assert pushed + killed_at <= len(lines) <= pushed + killed_at + 1, (
        f"{len(lines)} updates applied, {pushed} pushed by A, B, C2 and C3 and "
        f"{killed_at} (+1 in flight) by C1"
    )


def _check_compressed(audit: Path, got: Dict, c2_member: Dict, killed_at: int) -> None:
    """The int8 wire's rejoin, from the servers' audit of every key: each restarted group's
    first parameters are, bit for bit, the state its rejoin request read (the request echoed
    is group 2's own), and the servers took every exchange pushed, group 2's sequence starting
    again at 1 after each rejoin."""
    from hvd_ps.ps import codec, protocol

    n = _x0().size
    part = protocol.part_bytes(n, 8, 128) // 4  # one shard (HVD_PS_WIRE_BLOCK 128), in floats
    lines = []
    for f in sorted(audit.glob("server-*.jsonl")):
        lines += [json.loads(line) for line in f.read_text().splitlines()]
    rejoins = [x for x in lines if len(x["received"]) == n + protocol.REJOIN_EXTRA]
    assert len(rejoins) == 2, f"{len(rejoins)} rejoin requests, not C2's and C3's"
    for tag, line in zip(("C2", "C3"), rejoins):
        after = np.array(line["after"], np.float32)
        request = codec.as_bytes(after[n:])
        assert codec.read_rejoin(request, 8, 128, n).sender == 2
        assert (
            request.tobytes()
            == codec.as_bytes(np.array(line["received"], np.float32)[n:]).tobytes()
        )
        np.testing.assert_array_equal(got[tag]["first"], after[:n], err_msg=f"{tag}'s first")
        assert not np.allclose(after[:n], _x0(), atol=1e-4), f"{tag} started from x0"
    np.testing.assert_array_equal(got["C2"]["first"], c2_member["first"])  # the group agrees

    heads = [
        codec.read(codec.as_bytes(np.array(x["received"], np.float32)), 8, 128, n)
        for x in lines
        if len(x["received"]) == part
    ]
    pushed = sum(int(got[t]["exchanges"]) for t in ("A", "B", "C2", "C3"))
    assert pushed + killed_at <= len(heads) <= pushed + killed_at + 1, (
        f"{len(heads)} exchanges applied, {pushed} pushed by A, B, C2 and C3 and "
        f"{killed_at} (+1 in flight) by C1"
    )
    seqs = [h.seq for h in heads if h.sender == 2]
    runs = [i for i, q in enumerate(seqs) if q == 1]
    assert len(runs) == 3, f"group 2's sequence started {len(runs)} times, not 3: {seqs}"
    for a, b in zip(runs, runs[1:] + [len(seqs)]):
        assert seqs[a:b] == list(range(1, b - a + 1)), seqs
    assert seqs[runs[1] :] == list(range(1, int(got["C2"]["exchanges"]) + 1)) + list(
        range(1, int(got["C3"]["exchanges"]) + 1)
    ), seqs
