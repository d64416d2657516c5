"""End to end: examples/train_digits_torch.py (hvd_ps's PyTorch front end) under horovodrun,
4 ranks in 2 groups, embedded PS tier.

The global model must reach >= 93% test accuracy on scikit-learn's digits with a sync and an
async strategy (and with an async bound, with speed-adaptive periods, and with sync rounds closed
by a quorum on the int8 wire), GradientPush (the servers run MXNet's SGD) must follow plain
Horovod's PyTorch allreduce epoch by epoch, and the example prints the lines and writes the
``--json`` of the MXNet example (examples/digits.py makes both). Each job is a real
``horovodrun`` run bounded with ``timeout``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import job_run
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_digits_torch.py"
RANKS, GROUP_SIZE, EPOCHS, TIMEOUT = 4, 2, 12, 150

HOROVODRUN = shutil.which("horovodrun") or shutil.which(
    "horovodrun", path=str(Path(sys.executable).parent)
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(HOROVODRUN is None, reason="horovodrun not found"),
]

CONFIGS = {
    "easgd": ["--sync", "easgd", "--period", "4"],
    "diloco_async": ["--sync", "diloco", "--mode", "async"],
    "gradient_push": ["--sync", "gradient_push"],
    "horovod": ["--sync", "horovod"],
    # the straggler modes, through the same core as the MXNet front end's
    "easgd_async_bounded": ["--sync", "easgd", "--mode", "async", "--max-staleness", "1"],
    "diloco_async_auto": ["--sync", "diloco", "--mode", "async", "--period", "auto"],
    "diloco_int8_quorum": ["--sync", "diloco", "--wire", "int8", "--quorum", "1"],
}
#: the --json keys of examples/train_digits.py (examples/digits.py's report)
KEYS = {
    "sync", "strategy", "mode", "period", "ranks", "groups", "epochs", "steps_per_epoch",
    "final_test_accuracy", "best_test_accuracy", "setup_s", "train_time_s", "total_time_s",
    "history", "stats", "group_stats", "args",
}  # fmt: skip

_results: dict = {}


def run(name: str, tmp_dir: Path) -> dict:
    """Run one configuration once per session; return its --json output (and stdout)."""
    if name not in _results:
        out = tmp_dir / f"{name}.json"
        cmd = [
            HOROVODRUN, "-np", str(RANKS),
            sys.executable, str(SCRIPT), "--group-size", str(GROUP_SIZE),
            "--epochs", str(EPOCHS), "--progress", "lines", "--json", str(out),
            *CONFIGS[name],
        ]  # fmt: skip
        proc = job_run.run(job_run.bounded(cmd, TIMEOUT), job_run.env(), TIMEOUT + 15)
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        assert proc.returncode == 0, f"{name}: exit code {proc.returncode}\n{tail}"
        _results[name] = json.loads(out.read_text())
        _results[name]["stdout"] = proc.stdout
    return _results[name]


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits_torch")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_torch_example_reaches_93_percent(name: str, tmp_dir: Path) -> None:
    r = run(name, tmp_dir)
    accs = [round(100 * h["test_acc"], 2) for h in r["history"]]
    assert set(r) - {"stdout"} == KEYS
    assert len(r["history"]) == EPOCHS and r["ranks"] == RANKS
    assert r["final_test_accuracy"] >= 0.93, f"{name}: test accuracy per epoch {accs}"
    lines = [ln for ln in r["stdout"].splitlines() if "epoch" in ln and "global model" in ln]
    assert len(lines) == EPOCHS, r["stdout"][-2000:]
    assert re.search(r"final test accuracy \(global model\): \d+\.\d\d%", r["stdout"])
    if name != "horovod":
        assert r["groups"] == RANKS // GROUP_SIZE
        assert r["mode"] == ("async" if "async" in name else "sync")
        steps = r["steps_per_epoch"] * EPOCHS
        assert r["stats"]["steps"] == steps
        if r["period"] != "auto":
            assert r["stats"]["exchanges"] == steps // r["period"]
        assert r["stats"]["bytes_pushed"] > 0
        assert [g["group"] for g in r["group_stats"]] == [0, 1]


def test_torch_gradient_push_matches_horovod(tmp_dir: Path) -> None:
    """Sync GradientPush with the servers' SGD is data-parallel SGD over all ranks: its
    accuracy curve follows Horovod's PyTorch allreduce (up to float rounding)."""
    gp, hv = run("gradient_push", tmp_dir), run("horovod", tmp_dir)
    for a, b in zip(gp["history"], hv["history"]):
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.02, (a, b)
    assert abs(gp["history"][-1]["loss"] - hv["history"][-1]["loss"]) < 0.05


def test_the_torch_straggler_modes_report_their_counters(tmp_dir: Path) -> None:
    bounded = run("easgd_async_bounded", tmp_dir)
    for leader in bounded["group_stats"]:
        assert leader["max_staleness_seen"] <= 1, leader
    auto = run("diloco_async_auto", tmp_dir)
    for leader in auto["group_stats"]:
        assert 1 <= leader["period"] <= 8, leader  # period='auto': between min and max
    quorum = run("diloco_int8_quorum", tmp_dir)
    for leader in quorum["group_stats"]:
        assert "late_pushes" in leader and leader["quorum_wait_s"] >= 0.0, leader
    assert quorum["strategy"].endswith("wire int8")
