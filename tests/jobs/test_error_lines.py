"""A job that dies of an hvd_ps error says so in one line, once per job (hvd_ps/exits.py);
the full traceback only with HVD_PS_LOG_LEVEL=DEBUG; user errors keep their tracebacks."""

from __future__ import annotations

import re
import shutil
import subprocess

import job_run
import pytest

from hvd_ps import exits
from hvd_ps.errors import ConfigError, TopologyError

needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")


def run(scenario: str, **env: str) -> subprocess.CompletedProcess:
    """error_job.py SCENARIO on 4 ranks; its stderr is in its stdout."""
    cmd = job_run.mpirun(4, *job_run.program("error_job.py", scenario))
    return job_run.run(cmd, job_run.env(**{"HVD_PS_TIMEOUT": "20", **env}), timeout=120, merge=True)


def hvd_ps_lines(out: str) -> list:
    return re.findall(r"^hvd_ps: \w+: .*$", out, re.M)


def test_one_line_folds_the_message():
    err = TopologyError("group_size=3 does not divide\nthe world size 4")
    assert exits.one_line(err) == (
        "hvd_ps: TopologyError: group_size=3 does not divide the world size 4"
    )
    assert TopologyError.every_rank and not ConfigError.every_rank


@needs_mpirun
def test_an_error_of_every_rank_is_one_line_from_rank_0():
    job = run("bad-layout")
    assert job.returncode != 0
    assert hvd_ps_lines(job.stdout) == [
        "hvd_ps: TopologyError: group_size=3 does not divide the world size 4: pass a "
        "group_size that divides it, or groups=[[...], ...] for uneven groups"
    ], job.stdout[-3000:]
    assert "Traceback" not in job.stdout


@needs_mpirun
def test_an_error_of_one_rank_is_one_line_from_that_rank():
    job = run("one-rank")
    assert job.returncode != 0
    assert hvd_ps_lines(job.stdout) == [
        "hvd_ps: ConfigError: period=0 must be an integer >= 1 (raised on rank 1 only)"
    ], job.stdout[-3000:]
    assert "Traceback" not in job.stdout


@needs_mpirun
def test_debug_level_keeps_the_traceback():
    job = run("bad-layout", HVD_PS_LOG_LEVEL="DEBUG")
    assert job.returncode != 0
    assert job.stdout.count("Traceback (most recent call last)") == 4, job.stdout[-3000:]
    assert "hvd_ps.errors.TopologyError: group_size=3 does not divide" in job.stdout


@needs_mpirun
def test_a_user_error_keeps_its_traceback():
    job = run("user-error")
    assert job.returncode != 0
    assert "Traceback (most recent call last)" in job.stdout
    assert "ValueError: a bug in the user's own code" in job.stdout
    assert hvd_ps_lines(job.stdout) == []
