"""examples/console.py: rank 0's output, one whole line per write, tqdm bars only where they fit."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import console  # noqa: E402


@pytest.mark.parametrize(
    "mode, isatty, launched, expected",
    [
        ("auto", True, False, "bar"),  # a terminal, no launcher: the real bar
        ("auto", True, True, "lines"),  # mpirun hands every rank a pty: still lines
        ("auto", False, False, "lines"),
        ("auto", False, True, "lines"),
        ("bar", False, True, "bar"),
        ("lines", True, False, "lines"),
        ("none", True, False, "none"),
    ],
)
def test_resolve_mode(mode: str, isatty: bool, launched: bool, expected: str) -> None:
    assert console.resolve_mode(mode, isatty, launched) == expected


def test_resolve_mode_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="progress mode 'fancy' must be one of auto, bar"):
        console.resolve_mode("fancy", True, False)


def test_under_launcher() -> None:
    assert console.under_launcher({"OMPI_COMM_WORLD_SIZE": "4"})
    assert console.under_launcher({"PMI_SIZE": "2"})
    assert not console.under_launcher({"HOME": "/root"})


def test_emit_is_one_write(monkeypatch) -> None:
    writes = []
    monkeypatch.setattr(console.os, "write", lambda fd, data: writes.append((fd, data)) or 3)
    console.emit("epoch 1/3  loss 0.5\n", fd=7)  # a short write (3 bytes) is continued
    assert writes[0] == (7, b"epoch 1/3  loss 0.5\n")
    assert b"".join(w[1][:3] for w in writes) == b"epoch 1/3  loss 0.5\n"


def test_emit_through_a_pipe() -> None:
    r, w = os.pipe()
    try:
        console.emit("group 0: loss 1.2345", fd=w)
        console.emit("final", fd=w)
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            assert f.read() == b"group 0: loss 1.2345\nfinal\n"
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def test_whole_lines_under_tqdm() -> None:
    """A tqdm bar redrawn on every update through WholeLines: one whole line per redraw, no
    carriage return, no blank line from the clearing redraw at close."""
    lines: list = []
    bar = console._Bar(
        total=5,
        desc="epoch 1/2",
        leave=False,
        ascii=True,
        ncols=100,
        mininterval=0,
        file=console.WholeLines(lines.append),
    )
    for i in range(5):
        bar.set_postfix_str(f"loss {1.0 / (i + 1):.4f}", refresh=False)
        bar.update(1)
    bar.close()
    assert len(lines) == 6  # 0/5 at the start, then every update
    assert all("\r" not in ln and "\n" not in ln and ln == ln.strip() for ln in lines)
    assert lines[0].startswith("epoch 1/2:   0%")
    assert lines[-1].startswith("epoch 1/2: 100%") and "5/5" in lines[-1]
    assert lines[-1].endswith("loss 0.2000]")


def test_lines_mode_bar(monkeypatch) -> None:
    """In lines mode a bar says nothing before `interval` seconds (short epochs print only their
    epoch line), then one whole line at most every `interval` seconds."""
    lines: list = []
    monkeypatch.setattr(console, "emit", lines.append)
    with console.Console(True, "lines", interval=30.0).bar(4, "epoch 1/1") as bar:
        for _ in range(4):
            bar.update(1)
    assert lines == []
    with console.Console(True, "lines", interval=0.05).bar(4, "epoch 2/2") as bar:
        for _ in range(4):
            time.sleep(0.06)
            bar.update(1)
    assert 3 <= len(lines) <= 4, lines
    assert all(ln.startswith("epoch 2/2: ") and "\r" not in ln for ln in lines)


def test_console_lines_and_ranks(monkeypatch, capfd) -> None:
    console.Console(False, "lines").line("not from rank 1")
    console.Console(True, "lines").line("from rank 0")
    assert capfd.readouterr().out == "from rank 0\n"


def test_console_bar_mode_draws_in_place(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    c = console.Console(True, "bar")
    with c.bar(3, "epoch 1/1") as bar:
        for _ in range(3):
            bar.update(1)
    c.line("epoch 1/1  loss 0.1")
    text = out.getvalue()
    assert "\r" in text and "epoch 1/1:" in text  # tqdm's redraws
    assert text.endswith("epoch 1/1  loss 0.1\n")


@pytest.mark.parametrize(
    "accuracy, warned",
    [(0.10, True), (0.14, True), (float("nan"), True), (0.16, False), (0.97, False)],
)
def test_chance_warning_on_360_digits(accuracy: float, warned: bool) -> None:
    """Ten classes, 360 test samples: chance is 10%, three standard deviations 4.7 points."""
    line = console.chance_warning(accuracy, 10, 360)
    assert (line is not None) == warned
    if warned:
        assert line.startswith("WARNING: the final accuracy") and "no better than chance" in line
        assert "10% for 10 classes" in line and "14.7%" in line
