"""``import hvd_ps`` is light: the server, the launcher and the config never load Horovod, the
trainer or the compiled op (and the config not even MXNet)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "horovod",
    "hvd_ps.train.gluon",
    "hvd_ps._fusion",
    "hvd_ps.train.core.fusion",
    "hvd_ps.train.runtime",
)


def loaded_after(code: str) -> set:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys, json\n{code}\nprint('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("MODULES="))
    return set(json.loads(line[len("MODULES=") :]))


def heavy(modules: set) -> list:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_hvd_ps_and_config_load_neither_mxnet_nor_horovod():
    mods = loaded_after("import hvd_ps, hvd_ps.config")
    assert heavy(mods) == []
    assert not any(m == "mxnet" or m.startswith("mxnet.") for m in mods)


def test_hvdps_run_help_loads_no_horovod_trainer_or_op():
    code = (
        "from hvd_ps import launch\n"
        "try:\n    launch.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
    )
    assert heavy(loaded_after(code)) == []


def test_server_module_loads_no_horovod_trainer_or_op():
    code = "import hvd_ps.ps.server as s\nassert s.main() == 2  # no DMLC_ROLE: usage, exit 2"
    assert heavy(loaded_after(code)) == []


def test_public_names_load_on_first_use():
    code = (
        "import hvd_ps\nassert 'hvd_ps.train.core.strategies' not in sys.modules\n"
        "hvd_ps.EASGD(period=2)"
    )
    mods = loaded_after(code)
    assert "hvd_ps.train.core.strategies" in mods and "hvd_ps.train.gluon" not in mods


def test_unknown_name_is_an_attribute_error():
    import hvd_ps

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hvd_ps.nope  # noqa: B018
    assert set(hvd_ps.__all__) <= set(dir(hvd_ps))


def test_submodules_load_as_attributes():
    mods = loaded_after("import hvd_ps\nhvd_ps.topology.plan(4, group_size=2)\nhvd_ps.ps.__doc__")
    assert {"hvd_ps.topology", "hvd_ps.ps"} <= mods and heavy(mods) == []
