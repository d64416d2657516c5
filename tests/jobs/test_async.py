"""Async EASGD: a slow group does not slow a fast one, and the centre adds up every push."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_async_easgd_fast_group_does_not_wait_and_centre_is_sum_of_pushes():
    env = dict(os.environ, OMP_NUM_THREADS="1", HVD_PS_TIMEOUT="60")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    cmd = [
        "timeout",
        "-k",
        "5",
        "150",
        "mpirun",
        "-np",
        "4",
        "--oversubscribe",
        "--bind-to",
        "none",
        sys.executable,
        str(HERE / "programs" / "async_easgd.py"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if "RESULT " in ln)
    res = json.loads(line.split("RESULT ", 1)[1])
    # group 1 sleeps 5x longer per step; group 0 must finish its steps well before it
    assert res["fast_s"] < res["slow_s"] / 1.5, res
    # every d any leader pushed reached the centre: c = c0 + sum(d)
    assert res["pushed_norm"] > 0.1, res
    assert res["centre_err"] < 1e-5, res
