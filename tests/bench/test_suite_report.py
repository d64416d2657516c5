"""The cluster suite's report (benchmarks/report.py): the median row of repeats and its spread,
and the accuracy runs over seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/
from benchmarks.report import accuracy_table, efficiency, merge_repeats, merge_seeds, spread  # noqa: E402


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


def acc(name: str, seed: int, final: float, train_s: float, reached: bool = True) -> dict:
    method = name.split(" ")[0]
    return {"name": name, "method": method, "hosts": 2, "ranks_per_host": 2, "link": "1gbit",
            "params": 4349962, "reached": reached, "train_s": train_s, "epochs": 4 + seed,
            "final_test_accuracy": final, "eval_s": 0.1, "evals": [], "seed": seed}  # fmt: skip


def test_seeds_merge_into_means_and_each_overlapped_run_meets_its_own_seeds_twin():
    rows = [
        acc("horovod", 0, 0.97, 20.0),
        acc("model_average k=16", 0, 0.975, 10.0),
        acc("model_average k=16 overlap=15", 0, 0.965, 8.0),
        acc("horovod", 1, 0.96, 22.0),
        acc("model_average k=16", 1, 0.950, 12.0),
        acc("model_average k=16 overlap=15", 1, 0.958, 9.0, reached=False),
    ]
    merged = merge_seeds(rows)
    assert [r["name"] for r in merged] == [
        "horovod", "model_average k=16", "model_average k=16 overlap=15"]  # fmt: skip
    hvd, ma, ov = merged
    assert hvd["seeds"] == [0, 1] and hvd["train_s"] == pytest.approx(21.0)
    assert ma["final_test_accuracy"] == pytest.approx(0.9625)
    assert ma["final_runs"] == [0.975, 0.950] and ma["epochs"] == pytest.approx(4.5)
    # seed 0: 96.5 - 97.5; seed 1: 95.8 - 95.0 (not the other seed's twin)
    assert ov["vs_blocking"] == pytest.approx([-1.0, 0.8])
    assert "vs_blocking" not in ma
    assert ov["reached"] is False  # a seed that missed the target: not reached
    lines = accuracy_table({"args": {"target": 0.95, "acc_hidden": "2048,2048", "epochs": 12},
                            "accuracy": rows}, (2, 2))  # fmt: skip
    row_ov = next(x for x in lines if x.startswith("| model_average k=16 overlap=15 |"))
    assert "| -0.1 (-1.0 to +0.8) |" in row_ov
    assert row_ov.endswith("| 0.9580-0.9650 |")
    row_ma = next(x for x in lines if x.startswith("| model_average k=16 |"))
    assert "| 0.52x |" in row_ma  # 11 s against Horovod's 21 s, means over the seeds


def test_one_seed_keeps_the_single_run_table():
    rows = [acc("easgd k=16", 0, 0.97, 5.0), acc("easgd k=16 overlap=15", 0, 0.98, 4.0)]
    lines = accuracy_table({"args": {"target": 0.95, "acc_hidden": "2048,2048", "epochs": 12},
                            "accuracy": rows}, (2, 2))  # fmt: skip
    assert lines[-1] == "| easgd k=16 overlap=15 | yes | 4.0 | x | 4 | 0.9800 | +1.0 |"


def test_with_a_straggler_samples_per_s_sums_every_ranks_own_pace():
    import argparse

    from benchmarks.report import throughput_row

    spec = {"name": "diloco k=16", "method": "diloco", "period": 16, "overlap": 0, "steps": 2}
    ranks = [  # one warm-up step, then two timed ones: host 1 twice as slow
        {"rank": 0, "steps": [9.0, 0.5, 0.5], "fwd_bwd": [1.0, 0.2, 0.2], "params": 10},
        {"rank": 1, "steps": [9.0, 1.0, 1.0], "fwd_bwd": [1.0, 0.7, 0.7], "params": 10},
    ]
    got = {"ranks": ranks, "wall_s": 3.0}
    args = argparse.Namespace(batch=32, wire="float32", slow_group=1)
    slow = throughput_row(spec, got, 2, 1, "1gbit", args)
    assert slow["step_s"] == 1.0 and slow["slowest_rank"] == 1  # the slowest rank's
    assert slow["samples_per_s"] == pytest.approx(32 / 0.5 + 32 / 1.0)
    even = throughput_row(spec, got, 2, 1, "1gbit", argparse.Namespace(batch=32, wire="float32"))
    assert even["samples_per_s"] == pytest.approx(2 * 32 / 1.0)  # all at the slowest's pace
