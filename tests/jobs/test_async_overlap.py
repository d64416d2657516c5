"""Async EASGD with overlap=1: a slow group does not slow a fast one, the centre adds up every
pushed ``d``, each leader applies every exchange it started, and a group stays identical."""

import json

import job_run


def test_async_overlapped_easgd_keeps_its_invariants():
    cmd = job_run.bounded(job_run.mpirun(4, *job_run.program("async_easgd.py", "overlap")), 150)
    proc = job_run.run(cmd, job_run.env(), timeout=160)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if "RESULT " in ln)
    res = json.loads(line.split("RESULT ", 1)[1])
    assert res["fast_s"] < res["slow_s"] / 1.5, res  # group 1 sleeps 5x longer per step
    assert res["pushed_norm"] > 0.1, res
    assert res["centre_err"] < 1e-5, res  # c = c0 + sum(d): no push lost or doubled
    assert res["applied"] == [14, 0, 14, 0], res  # leaders applied all 14 exchanges
    assert res["group_spread"] == 0.0, res  # members hold exactly their leader's parameters
