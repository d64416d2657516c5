"""scripts/demo.sh (the README's first command) with its output captured, as a user's pipe or a
CI log sees it: horovodrun, 4 ranks in 2 groups, a few epochs.

Open MPI tags every chunk a rank writes with ``[1,<rank>]<stdout>:``; a line written in pieces
or redrawn with ``\\r`` comes out broken. ``PYTHONUNBUFFERED=1`` (common in containers, and
what makes every ``print()`` two writes) is set on purpose. Checked: no ``\\r`` anywhere, every
line of the job is exactly one rank-0 prefix plus one whole message of a known form, one epoch
line per epoch in order with the groups in order, the final accuracy line with a sane number,
and nothing of the job left running afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, GROUPS, TIMEOUT = 4, 2, 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("horovodrun", path=str(Path(sys.executable).parent)) is None,
        reason="horovodrun not found next to this Python (run scripts/bootstrap.sh)",
    ),
]

PREFIX = re.compile(r"\[\d+,\d+\]<std(?:out|err)>:")
NUM = r"\d+\.\d{4}"
PCT = r"\d{1,3}\.\d{2}%"
GROUP = rf"  \| group (\d+): loss {NUM} acc +{PCT}"
EPOCH = re.compile(
    rf"epoch +(\d+)/{EPOCHS}  loss {NUM}  global model +{PCT}((?:{GROUP})*)  \| \d+\.\d\d s"
)
FINAL = re.compile(
    r"final test accuracy \(global model\): (\d+\.\d\d)%  \(training \d+\.\d s, total \d+\.\d s\)"
)
MESSAGES = [
    re.compile(
        r"digits: 4 ranks in 2 group\(s\) \(0: ranks \[0, 1\], 1: ranks \[2, 3\]\); \d+ training "
        r"samples per rank, \d+ test samples, \d+ steps per epoch"
    ),
    re.compile(r"sync: EASGD\(.*\)"),
    EPOCH,
    FINAL,
    re.compile(r"plot written to \S+digits\.png"),
]
DEMO_LINES = [
    re.compile(
        rf"\[demo\] horovodrun -np 4 python examples/train_digits.py --group-size 2 "
        rf"--epochs {EPOCHS}"
    ),  # fmt: skip
    re.compile(
        r"\[demo\] EASGD\(.*\): final test accuracy of the global model (\d+\.\d\d)% "
        rf"after {EPOCHS} epochs \(.* s of training, .* s in the script\)"
    ),  # fmt: skip
    re.compile(r"\[demo\] plot: \S+digits\.png"),
    re.compile(r"\[demo\] metrics: \S+digits\.json"),
]


def _env(out_dir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        DEMO_OUT=str(out_dir),
        DEMO_TIMEOUT=str(TIMEOUT - 60),
        HVD_PS_TIMEOUT="60",
        PYTHONUNBUFFERED="1",
    )
    for k in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_ROLE"):
        env.pop(k, None)  # the embedded tier, not one configured elsewhere
    return env


def _ours(marker: str) -> list:
    """Processes whose environment carries this run's DEMO_OUT (every process the demo made)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("DEMO_OUT") == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _run_demo(out_dir: Path) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "scripts" / "demo.sh"), "--epochs", str(EPOCHS)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(out_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"demo.sh did not finish in {TIMEOUT} s\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        deadline = time.monotonic() + 20  # servers and ranks get a moment to finish exiting
        left = _ours(str(out_dir))
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _ours(str(out_dir))
        for p in left:
            p.kill()
        assert not left, f"processes of the demo still running: {[p.pid for p in left]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_demo_output_is_whole_prefixed_lines(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = _run_demo(tmp_path)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    assert "\r" not in out and "\r" not in err
    assert "\033" not in out  # no terminal escapes into a pipe

    messages, demo = [], []
    for line in out.splitlines():
        if line.startswith("[demo] "):
            demo.append(line)
            continue
        if line.startswith("[bootstrap] "):  # installing what changed since the last run
            continue
        assert line.startswith("[1,0]<stdout>:"), f"not rank 0's whole line: {line!r}"
        msg = line[len("[1,0]<stdout>:") :]
        assert not PREFIX.search(msg), f"two prefixes on one line (a broken message): {line!r}"
        assert [m for m in MESSAGES if m.fullmatch(msg)], f"not one whole message: {line!r}"
        messages.append(msg)

    epochs = [EPOCH.fullmatch(m) for m in messages]
    epochs = [m for m in epochs if m]
    assert [int(m.group(1)) for m in epochs] == list(range(1, EPOCHS + 1))
    for m in epochs:  # every group's figures, in group order, on the epoch's own line
        assert [int(g) for g in re.findall(r"\| group (\d+):", m.group(2))] == list(range(GROUPS))
    finals = [FINAL.fullmatch(m) for m in messages]
    finals = [m for m in finals if m]
    assert len(finals) == 1 and messages[-2] == finals[0].group(0)  # then "plot written to"
    accuracy = float(finals[0].group(1))
    assert accuracy > 80.0, f"final accuracy {accuracy}% after {EPOCHS} epochs"

    assert len(demo) == len(DEMO_LINES), demo
    for line, pattern in zip(demo, DEMO_LINES):
        assert pattern.fullmatch(line), line
    assert float(DEMO_LINES[1].fullmatch(demo[1]).group(1)) == accuracy
    assert (tmp_path / "digits.png").stat().st_size > 0
    print(f"demo.sh --epochs {EPOCHS}: {time.perf_counter() - t0:.1f} s, accuracy {accuracy}%")
