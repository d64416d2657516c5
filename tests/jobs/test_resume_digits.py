"""End to end: examples/train_digits.py (MXNet) and train_digits_torch.py (PyTorch) stopped
mid-epoch and resumed from their checkpoint end with the same losses and accuracies as the run
that never stopped.

Three real ``horovodrun`` jobs of 2 ranks in 2 groups with DiLoCo (period 3: the checkpoint is
taken mid-period, and it must carry the servers' outer momentum, x_start and the local SGD's
momentum): the uninterrupted run of 2 epochs; a run of 1 epoch that saves every 5 steps (the
last save falls mid-epoch); and the same command with 2 epochs, which finds the checkpoint,
resumes from it and trains the rest. Epoch 2's figures of the last two must agree.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import job_run
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"mxnet": ROOT / "examples" / "train_digits.py",
           "torch": ROOT / "examples" / "train_digits_torch.py"}  # fmt: skip
HOROVODRUN = shutil.which("horovodrun") or shutil.which(
    "horovodrun", path=str(Path(sys.executable).parent)
)
pytestmark = pytest.mark.skipif(HOROVODRUN is None, reason="horovodrun not found")
FLAGS = ["--sync", "diloco", "--period", "3", "--group-size", "1", "--quiet"]


def _job(tmp_path: Path, script: Path, name: str, epochs: int, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    cmd = [HOROVODRUN, "-np", "2", sys.executable, str(script), *FLAGS]
    cmd += ["--epochs", str(epochs), "--json", str(out), *extra]
    proc = job_run.run(cmd, job_run.env(), timeout=150)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"{name}: exit code {proc.returncode}\n{tail}"
    return {"result": json.loads(out.read_text()), "stdout": proc.stdout}


@pytest.mark.parametrize("framework", list(SCRIPTS))
def test_a_resumed_run_ends_like_the_uninterrupted_one(tmp_path, framework):
    script = SCRIPTS[framework]
    whole = _job(tmp_path, script, "whole", 2)["result"]
    ckpt = tmp_path / "ckpt"
    flags = ("--checkpoint-dir", str(ckpt), "--checkpoint-every", "5")
    first = _job(tmp_path, script, "first", 1, *flags)
    steps = first["result"]["steps_per_epoch"]
    saved = steps - steps % 5
    assert steps % 5 and (ckpt / "train_digits.hvdps").exists()  # the last save: mid-epoch
    second = _job(tmp_path, script, "second", 2, *flags)
    assert f"resumed from {ckpt / 'train_digits.hvdps'} after step {saved}" in second["stdout"]
    a, b = whole["history"][-1], second["result"]["history"][-1]
    assert b["epoch"] == a["epoch"] == 2
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
    assert b["test_acc"] == a["test_acc"]
    for ga, gb in zip(a["groups"], b["groups"]):
        assert gb["loss"] == pytest.approx(ga["loss"], rel=1e-6, abs=1e-7)
        assert gb["test_acc"] == ga["test_acc"]
    assert second["result"]["stats"]["steps"] == 2 * steps
