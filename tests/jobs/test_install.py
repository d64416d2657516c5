"""docs/install.md, followed as written: hvd_ps into a fresh virtualenv of its own.

The block installs the pinned numpy, MXNet and mpi4py, builds Horovod 0.28.1 with MXNet and
MPI from its sources with hvd_ps's fix (scripts/patch_horovod.py), installs this checkout with
``--no-build-isolation`` (which compiles the C++ op against that mxnet), then checks the
install: the op loads and ``hvdps-run --help`` prints its usage. Every command runs as the page
spells it, with ``/path/to/hvd_ps`` the checkout and the new environment's ``bin/`` first on
``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = "docs/install.md"
#: the Horovod build takes about 5 minutes on 2 cores (pip caches no build of a directory)
TIMEOUT = 1200


def block() -> str:
    blocks = re.findall(r"^```bash\n(.*?)^```$", (ROOT / GUIDE).read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"{GUIDE} has {len(blocks)} bash blocks, not 1"
    return blocks[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpicc") is None, reason="needs Open MPI's compiler wrapper")
def test_install_into_a_fresh_environment(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    script = block().replace("/path/to/hvd_ps", str(ROOT))
    env = dict(os.environ)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    env.pop("PYTHONPATH", None)  # nothing of the checkout but what pip installs
    env.pop("VIRTUAL_ENV", None)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        ["timeout", "-k", "10", str(TIMEOUT), "bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,  # not the checkout: `import hvd_ps` must find the installed package
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 30,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "FusedBuffer loaded" in proc.stdout, out[-4000:]
    assert "usage: hvdps-run" in proc.stdout, out[-4000:]
    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import hvd_ps; print(hvd_ps.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert str(env_dir) in where, where  # the installed copy, not the checkout
