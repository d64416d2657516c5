"""benchmarks/soak.py: a short async DiLoCo soak passes, and its verdict and failure lines.

The soak (three async groups on one shared tier, group 2's jobs rejoining in turn, every
other one killed with SIGKILL) must keep every group finite, lose nothing and exit 0 with the
async DiLoCo rule (the earlier rule, a whole outer step per push, made groups raise
NonFiniteError within minutes). A failed group is a line of the result, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import job_run
import pytest

from benchmarks import soak

ROOT = Path(__file__).resolve().parents[2]


def test_last_error_picks_the_line_that_says_why() -> None:
    log = "\n".join(
        [
            "[1,0]<stdout>:G1: group 1 of 3 ready",
            "[1,0]<stderr>:hvd_ps: NonFiniteError: group 1's parameters are not finite",
            "--------------------------------------------------------------------------",
            "Primary job  terminated normally, but 1 process returned",
        ]
    )
    assert soak.last_error(log) == (
        "[1,0]<stderr>:hvd_ps: NonFiniteError: group 1's parameters are not finite"
    )
    assert soak.last_error("just\nsome output\n") == "some output"
    assert soak.last_error("") == "(no output)"


def test_a_failed_job_is_a_line_of_the_result(tmp_path: Path) -> None:
    log = tmp_path / "G1.log"
    log.write_text("ready\nValueError: bad things\nexiting\n")
    assert soak.failure(1, "G1", 1, log) == {
        "group": 1,
        "job": "G1",
        "exit_code": 1,
        "last_error": "ValueError: bad things",
    }
    missing = soak.failure(2, "C3", 137, tmp_path / "C3.log")
    assert missing["exit_code"] == 137 and missing["last_error"].startswith("(no log:")


@pytest.mark.parametrize(
    "lost, unaccounted, kills, failures, tier, finite, ok",
    [
        (0, 0, 2, [], 0, True, True),
        (0, 2, 2, [], 0, True, True),  # each killed job's last push may land uncounted
        (1, 0, 2, [], 0, True, False),
        (0, 3, 2, [], 0, True, False),
        (0, -1, 2, [], 0, True, False),  # fewer applied than pushed: a lost push
        (0, 0, 2, [{"group": 1}], 0, True, False),
        (0, 0, 2, [], 1, True, False),
        (0, 0, 2, [], 0, False, False),
    ],
)
def test_verdict(lost, unaccounted, kills, failures, tier, finite, ok) -> None:
    audit = {"applied": 100, "lost": lost}
    assert soak.verdict(audit, unaccounted, kills, failures, tier, finite) is ok


@pytest.mark.slow
def test_a_short_async_diloco_soak_passes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.soak", "--minutes", "0.4", "--strategy", "DiLoCo"]
    cmd += ["--restart-every", "40", "--out", str(tmp_path)]
    proc = job_run.run(job_run.bounded(cmd, 300), job_run.env(), timeout=315)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    assert proc.returncode == 0 and report["ok"], out[-3000:]
    assert report["failures"] == [] and report["finite"] is True
    assert report["exit_codes"] == [0, 0] and report["tier_exit_code"] == 0
    assert report["lost"] == 0 and 0 <= report["unaccounted"] <= report["kills"]
    assert report["kills"] >= 1 and report["exchanges_pushed"] > 200
    # the last job of group 2 left cleanly: jobs alternate clean, killed, ..., clean
    assert report["jobs_of_group_2"] % 2 == 1 and report["jobs_of_group_2"] >= 3
