"""Async EASGD: a slow group does not slow a fast one, and the centre adds up every push."""

import json

import job_run


def test_async_easgd_fast_group_does_not_wait_and_centre_is_sum_of_pushes():
    cmd = job_run.bounded(job_run.mpirun(4, *job_run.program("async_easgd.py")), 150)
    proc = job_run.run(cmd, job_run.env(), timeout=160)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if "RESULT " in ln)
    res = json.loads(line.split("RESULT ", 1)[1])
    # group 1 sleeps 5x longer per step; group 0 must finish its steps well before it
    assert res["fast_s"] < res["slow_s"] / 1.5, res
    # every d any leader pushed reached the centre: c = c0 + sum(d)
    assert res["pushed_norm"] > 0.1, res
    assert res["centre_err"] < 1e-5, res
