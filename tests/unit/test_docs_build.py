"""The documentation builds: ``mkdocs build --strict`` (mkdocs.yml), as scripts/test.sh runs it.

Strict mode turns every warning into an error: a link to a page or anchor that does not exist,
a page missing from the navigation, an API name (``::: hvd_ps.NAME`` in docs/api.md) that no
longer resolves. The API reference is read by static analysis, so nothing imports MXNet. The
site goes to a temporary directory, never into the working tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )
    for page in ("index.html", "api/index.html", "migrating/index.html"):
        assert (site / page).is_file(), f"the build wrote no {page}"
    api = (site / "api" / "index.html").read_text()
    for name in ("DistributedTrainer", "broadcast_parameters", "EASGD", "FusedBuffer", "init"):
        assert f"{name}</" in api or f">{name}<" in api, f"the API reference lacks {name}"
    # docstrings' Sphinx roles and `Example::` blocks render as code, never as raw markup
    for raw in (":class:", ":func:", ":mod:", ":meth:", "Example::"):
        assert raw not in api, f"the API reference shows {raw!r} as text"
    assert "CheckpointError" in api and "NonFiniteError" in api
