"""The cluster suite's repeats (benchmarks/report.py): the median row and the spread."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: benchmarks/
from benchmarks.report import efficiency, merge_repeats, spread  # noqa: E402


def row(name: str, method: str, step_s: float, repeat: int, link: str = "1gbit") -> dict:
    return {"name": name, "method": method, "hosts": 4, "ranks_per_host": 1, "link": link,
            "step_s": step_s, "repeat": repeat}  # fmt: skip


def test_median_row_every_repeat_and_efficiency_against_the_same_repeat():
    rows = [
        row("bound", "bound", 0.5, 0),
        row("easgd k=16", "easgd", 1.0, 0),
        row("bound", "bound", 0.4, 1),
        row("easgd k=16", "easgd", 0.5, 1),
        row("bound", "bound", 0.6, 2),
        row("easgd k=16", "easgd", 0.8, 2),
        row("bound", "bound", 2.0, 0, link="100mbit"),  # another link: its own group
    ]
    merged = merge_repeats(rows)
    assert [(r["name"], r["link"]) for r in merged] == [
        ("bound", "1gbit"), ("easgd k=16", "1gbit"), ("bound", "100mbit")]  # fmt: skip
    bound, easgd, other = merged
    assert easgd["step_s"] == 0.8 and easgd["repeat"] == 2  # the median of 1.0, 0.5, 0.8
    assert bound["step_s"] == 0.5
    assert easgd["repeats"] == 3 and other["repeats"] == 1
    assert easgd["step_s_runs"] == [1.0, 0.5, 0.8]  # in repeat order
    assert easgd["efficiency_runs"] == pytest.approx([0.5, 0.8, 0.75])
    assert spread(easgd) == "0.500-1.000 s; 0.50-0.80"
    assert spread(other) == ""  # one run: no spread
    efficiency(merged)  # the table's efficiency: the median bound over the median run
    assert easgd["efficiency"] == pytest.approx(0.5 / 0.8)


def test_even_count_takes_the_lower_median_and_rows_are_copies():
    rows = [row("bound", "bound", 0.5, 0), row("bound", "bound", 0.7, 1)]
    merged = merge_repeats(rows)
    assert merged[0]["step_s"] == 0.5
    assert "repeats" not in rows[0]  # the raw rows are kept as they were
