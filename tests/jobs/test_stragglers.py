"""A straggler as a user meets one: examples/train_digits.py with ``--slow-group 1
--slowdown 5`` (group 1's ranks sleep four times each step's computation), two async EASGD
groups of one rank each, launched with ``hvdps-run``, the servers auditing every update
(``HVD_PS_AUDIT_DIR``).

With ``--max-staleness 1`` the servers' audit of the group clock shows every count a group
pushed, with the others' counts before it: no exchange started more than one exchange ahead of
the other group, each group's counts are 1, 2, ... then the finished mark, and every model key
took exactly one push per group and exchange (nothing lost, nothing applied twice). The fast
group reports the wait. Without the bound the fast group runs ahead, which the same
statistics show.

A sync DiLoCo run on the int8 wire with ``--quorum 1`` (group 1 four times as slow): the audit
of the rounds key shows every report in exactly one round, and rounds closed without the
straggler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import job_run
import numpy as np
import pytest

from hvd_ps.ps import protocol, rules

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_digits.py"
EPOCHS, PERIOD, TIMEOUT = 6, 4, 150
pytestmark = pytest.mark.slow


#: the bounded-staleness runs' strategy
ASYNC_EASGD = ("--sync", "easgd", "--mode", "async", "--slowdown", "5")


def _run(tmp: Path, name: str, *flags: str, base=ASYNC_EASGD, epochs: int = EPOCHS) -> dict:
    audit, out = tmp / f"audit-{name}", tmp / f"{name}.json"
    cmd = job_run.launcher(
        "-np", "2", "--group-size", "1",
        "python", str(SCRIPT), "--epochs", str(epochs), *base,
        "--period", str(PERIOD), "--slow-group", "1", "--quiet",
        "--json", str(out), *flags,
    )  # fmt: skip
    env = job_run.env(HVD_PS_AUDIT_DIR=str(audit))
    proc = job_run.run(job_run.bounded(cmd, TIMEOUT), env, TIMEOUT + 15)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"{name}: exit code {proc.returncode}\n{tail}"
    slowdown = base[base.index("--slowdown") + 1]
    assert f"straggler (emulated): group 1's ranks take {slowdown}x as long" in proc.stdout
    result = json.loads(out.read_text())
    result["audit"] = [
        json.loads(line) for f in sorted(audit.glob("server-*.jsonl")) for line in f.open()
    ]
    return result


def _clock_pushes(audit: List[dict], groups: int) -> List[dict]:
    """The audit's lines of the group clock: ``2 groups`` elements, one group's count and pace
    and -1 elsewhere."""
    out = []
    for a in audit:
        got = a["received"]
        if len(got) == 2 * groups and sorted(got[:groups])[: groups - 1] == [-1.0] * (groups - 1):
            out.append(a)
    return out


def test_a_bounded_straggler_run_holds_the_bound_and_loses_nothing(tmp_path: Path) -> None:
    r = _run(tmp_path, "bounded", "--max-staleness", "1")
    exchanges = r["steps_per_epoch"] * EPOCHS // PERIOD
    fast, slow = r["group_stats"]
    assert (fast["group"], slow["group"]) == (0, 1)
    for g in (fast, slow):
        assert g["exchanges"] == exchanges and g["max_staleness_seen"] <= 1, g
    assert fast["staleness_wait_s"] > 0.2 and fast["straggler_sleep_s"] == 0.0, fast
    assert slow["straggler_sleep_s"] > 0.0, slow
    assert r["final_test_accuracy"] >= 0.92, r["history"]

    clocks = _clock_pushes(r["audit"], 2)
    counts: Dict[int, List[float]] = {0: [], 1: []}
    for line in clocks:
        g = max(range(2), key=lambda j: line["received"][j])
        count, other = line["received"][g], line["before"][1 - g]
        counts[g].append(count)
        if count < protocol.CLOCK_DONE and other < protocol.CLOCK_DONE:
            assert count - other <= 1, f"group {g} completed exchange {count} at {other}"
    for g in (0, 1):  # 1, 2, ... in order, each once, then the finished mark
        assert counts[g] == [float(k) for k in range(1, exchanges + 1)] + [protocol.CLOCK_DONE]
    # every model key: one push per group and exchange (the initial value is no update)
    per_key: Dict[int, int] = {}
    for line in r["audit"]:
        if line not in clocks:
            per_key[line["key"]] = per_key.get(line["key"], 0) + 1
    assert per_key and set(per_key.values()) == {2 * exchanges}, per_key


def test_without_a_bound_the_fast_group_runs_ahead(tmp_path: Path) -> None:
    r = _run(tmp_path, "free")
    fast, slow = r["group_stats"]
    assert fast["max_staleness_seen"] >= 3, fast
    assert fast["staleness_wait_s"] == 0.0 and slow["staleness_wait_s"] == 0.0


#: the quorum run's strategy: sync DiLoCo on the int8 wire, rounds closed by one group
QUORUM = ("--sync", "diloco", "--wire", "int8", "--slowdown", "4", "--quorum", "1")
#: a part's first four bytes as the float32 element they travel in (int8: 8 bits)
PART_HEAD = float(np.frombuffer(protocol.MAGIC + bytes([1, 8]), np.float32)[0])


def test_a_quorum_run_closes_rounds_without_the_straggler_and_loses_nothing(tmp_path: Path):
    """Sync DiLoCo, int8, ``--quorum 1``: the rounds key's audit shows each group's reports
    1, 2, ... in order, then its finished mark; every report in exactly one round, the rounds
    numbered 1, 2, ... with no gap; the straggler late at least once, so rounds closed without
    it; and each group's wire keys took exactly one push per exchange."""
    epochs = 4
    r = _run(tmp_path, "quorum", base=QUORUM, epochs=epochs)
    exchanges = r["steps_per_epoch"] * epochs // PERIOD
    fast, slow = r["group_stats"]
    assert fast["exchanges"] == slow["exchanges"] == exchanges
    assert slow["late_pushes"] >= 1, slow
    # the rounds' timing sets which pushes are late, so the accuracy moves between runs: 0.92 to
    # 0.96 here on a loaded machine, 0.867 once in CI; scaling a partial round to its members'
    # mean (the rejected rule) reached 0.617, and a broken round stays near chance (0.1)
    assert r["final_test_accuracy"] >= 0.8, r["history"]
    size = protocol.rounds_size(2)
    sized = [a for a in r["audit"] if len(a["received"]) == size]
    key = min(a["key"] for a in sized)  # the rounds key is registered before the commit keys
    lines = [a for a in sized if a["key"] == key]
    reports: Dict[int, List[int]] = {0: [], 1: []}
    done: Dict[int, int] = {0: 0, 1: 0}
    rounds: Dict[int, Dict[int, int]] = {}
    for a in lines:
        kind, group, seq = (int(v) for v in a["received"][:3])
        if kind == protocol.ROUND_REPORT:
            assert done[group] == 0, f"group {group} reported after it finished"
            reports[group].append(seq)
        done[group] += kind == protocol.ROUND_DONE
        after = np.array(a["after"], np.float32)
        closed, first, members = rules.read_rounds(after, 2, protocol.ROUND_WINDOW)
        for k, m in members.items():
            assert rounds.setdefault(k, m) == m, f"round {k} changed its members"
    assert reports == {g: list(range(1, exchanges + 1)) for g in (0, 1)}
    assert done == {0: 1, 1: 1}
    assert sorted(rounds) == list(range(1, len(rounds) + 1))
    seen = sorted((g, s) for m in rounds.values() for g, s in m.items())
    assert seen == [(g, s) for g in (0, 1) for s in range(1, exchanges + 1)]  # each once
    assert any(len(m) == 1 and 0 in m for m in rounds.values()), rounds  # closed without 1
    per_key: Dict[int, int] = {}
    for a in r["audit"]:
        if a["received"][0] == PART_HEAD:
            per_key[a["key"]] = per_key.get(a["key"], 0) + 1
    assert per_key and set(per_key.values()) == {exchanges}, per_key
