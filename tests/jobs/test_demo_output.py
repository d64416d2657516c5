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
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import job_run  # tests/job_run.py
import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    re.compile(r"sync: EASGD\(period=4, .*\), alpha = 0\.9 / 2 groups = 0\.45"),
    EPOCH,
    FINAL,
    re.compile(r"plot written to \S+digits\.png"),
]
DEMO_LINES = [
    re.compile(
        rf"\[demo\] horovodrun -np 4 python examples/train_digits.py --group-size 2 "
        rf"--epochs {EPOCHS}"
    ),
    re.compile(
        r"\[demo\] done: (\d+\.\d\d)% test accuracy of the global model "
        rf"after {EPOCHS} epochs \(.* s of training, .* s in the script\)"
    ),
    re.compile(r"\[demo\] plot: \S+digits\.png"),
    re.compile(r"\[demo\] metrics: \S+digits\.json"),
]


def test_demo_output_is_whole_prefixed_lines(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    cmd = ["bash", str(ROOT / "scripts" / "demo.sh"), "--epochs", str(EPOCHS)]
    job_env = job_run.env(
        str(tmp_path), DEMO_OUT=str(tmp_path), DEMO_TIMEOUT=str(TIMEOUT - 60), PYTHONUNBUFFERED="1"
    )
    proc = job_run.run(cmd, job_env, TIMEOUT)
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


def test_bar_on_a_terminal_without_launcher(tmp_path: Path) -> None:
    """Run directly on a terminal (a pty of 30x120, no mpirun in front): a real tqdm bar,
    redrawn in place, and the same whole epoch lines."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    script = ROOT / "examples" / "train_digits.py"
    job_env = job_run.env(str(tmp_path), PYTHONUNBUFFERED="")
    cmd = [sys.executable, str(script), "--epochs", "2", "--batch-size", "8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the pty
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        pids = job_run.reap(str(tmp_path))
    assert not pids, f"processes left running (killed now): {pids}"
    text = b"".join(chunks).decode(errors="replace")
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert rc == 0, f"exit code {rc}\n{text[-2000:]}\n{err[-2000:]}"
    assert re.search(r"\repoch 1/2: +\d+%\|.*\| \d+/179 \[", text), text[-2000:]  # tqdm
    lines = [ln.split("\r")[-1] for ln in text.split("\r\n")]
    assert [ln for ln in lines if re.fullmatch(r"epoch [12]/2  loss .* s", ln)], text[-2000:]
    assert any(FINAL.fullmatch(ln) for ln in lines), text[-2000:]
