"""A Horovod script that keeps its own ``hvd.init()`` before ``hvd_ps.init()`` (2 ranks)."""

import subprocess

import job_run
import pytest


def _job(mode: str) -> subprocess.CompletedProcess:
    cmd = job_run.mpirun(2, *job_run.program("horovod_init_job.py", mode))
    return job_run.run(job_run.bounded(cmd, 120), job_run.env(HVD_PS_TIMEOUT="30"), timeout=130)


def test_plain_hvd_init_first_is_refused_at_once_naming_the_line():
    proc = _job("plain")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    refused = [ln for ln in proc.stdout.splitlines() if "REFUSED " in ln]
    assert len(refused) == 2, proc.stdout  # on both ranks
    for line in refused:
        seconds = float(line.split("REFUSED ", 1)[1].split()[0])
        assert seconds < 5.0, line  # at once: no wait for the tier or a timeout
        assert "hvd.init() was called before hvd_ps.init()" in line
        assert "delete that hvd.init() line" in line and "process_sets='dynamic'" in line


@pytest.mark.parametrize("mode", ["dynamic"])
def test_hvd_init_with_dynamic_process_sets_first_works(mode):
    proc = _job(mode)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    errs = [float(ln.split("TRAINED ", 1)[1]) for ln in proc.stdout.splitlines() if "TRAINED" in ln]
    assert len(errs) == 2 and max(errs) < 1e-5, proc.stdout
