"""A straggler, side by side in one run: every mode at every slowdown of one group.

Two groups of one rank each train digits (benchmarks/straggler_job.py: the MLP of
examples/train_digits.py, 12 epochs, DiLoCo period 8 with the example's outer step); group 1
is slowed ``F`` times (examples/straggler.py's emulation) for each ``F`` of ``--slowdowns``,
``F = 1`` being the all-fast twin. Modes: Horovod (allreduce every step), DiLoCo's plain sync
rounds (float32, and int8), sync DiLoCo on int8 whose rounds close with a quorum of one group,
async DiLoCo without a bound, with ``max_staleness`` 2 and 1, and with ``period='auto'``
(the fast group's 8 steps, the slow one's fewer). The modes and
slowdowns run interleaved, once per seed, so load from elsewhere hits them alike.

Per mode and slowdown, over the seeds: the time until the global model first reached 95%
(as the fast group's leader saw it after each of its epochs), the final accuracy, and the
throughput (samples per second summed over the groups, each over its own training time), and
the fast group's seconds waiting for the PS per step (``ps_wait_s`` over its steps). The
ratios divide by the same mode at ``F = 1`` and by the fastest all-fast mode. Writes
``benchmarks/results/stragglers.{json,md,png}``.

    python benchmarks/bench_stragglers.py                       # 3 seeds, F = 1, 1.5, 2, 4
    python benchmarks/bench_stragglers.py --seeds 1 --slowdowns 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "benchmarks" / "straggler_job.py"
RESULTS = ROOT / "benchmarks" / "results"
DILOCO = ["--sync", "diloco", "--period", "8"]
ASYNC = DILOCO + ["--mode", "async"]
MODES = {  # name -> (label, flags of straggler_job.py)
    "horovod": ("Horovod allreduce", ["--sync", "horovod"]),
    "sync": ("DiLoCo sync rounds", DILOCO),
    "sync_int8": ("DiLoCo sync rounds, int8", DILOCO + ["--wire", "int8"]),
    "quorum": ("DiLoCo sync, int8, quorum 1", DILOCO + ["--wire", "int8", "--quorum", "1"]),
    "async": ("DiLoCo async", ASYNC),
    "async_s2": ("DiLoCo async, max_staleness 2", ASYNC + ["--max-staleness", "2"]),
    "async_s1": ("DiLoCo async, max_staleness 1", ASYNC + ["--max-staleness", "1"]),
    "async_auto": ("DiLoCo async, period auto (8 at most)", ASYNC + ["--period", "auto"]),
}


def run_job(flags: List[str], slowdown: float, seed: int, out: Path, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1")
    cmd = [sys.executable, "-m", "hvd_ps.launch", "-np", "2", "--group-size", "1",
           sys.executable, str(JOB), *flags, "--group-size", "1", "--seed", str(seed),
           "--slow-group", "1", "--slowdown", f"{slowdown:g}", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        ["timeout", "-k", "5", str(timeout), *cmd],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise SystemExit(
            f"{' '.join(flags)} at slowdown {slowdown:g}: exit {proc.returncode}\n{tail}"
        )
    return json.loads(out.read_text())


def throughput(result: dict) -> float:
    return sum(g["samples"] / g["train_s"] for g in result["groups"])


def fast_wait_ms(result: dict) -> Optional[float]:
    """Group 0's (a fast group's) milliseconds waiting for the PS per step (None: no PS)."""
    g = next(g for g in result["groups"] if g["group"] == 0)
    if "ps_wait_s" not in g:
        return None
    return 1000.0 * g["ps_wait_s"] / (g["samples"] / 32)


def summarize(runs: List[dict], modes: List[str], slowdowns: List[float]) -> List[dict]:
    rows = []
    for mode in modes:
        for f in slowdowns:
            mine = [r for r in runs if r["mode"] == mode and r["slowdown"] == f]
            times = [r["result"]["time_to_target_s"] for r in mine]
            reached = [t for t in times if t is not None]
            rows.append({
                "mode": mode, "slowdown": f, "runs": len(mine),
                "reached": len(reached),
                "time_to_95_s": statistics.mean(reached) if reached else None,
                "time_spread_s": [min(reached), max(reached)] if reached else None,
                "final_accuracy": statistics.mean(r["result"]["final_accuracy"] for r in mine),
                "final_min": min(r["result"]["final_accuracy"] for r in mine),
                "throughput": statistics.mean(throughput(r["result"]) for r in mine),
                "max_staleness_seen": max(
                    g.get("max_staleness_seen", 0) for r in mine for g in r["result"]["groups"]
                ),
                "fast_wait_ms": _mean([fast_wait_ms(r["result"]) for r in mine]),
            })  # fmt: skip
    fastest = min(
        (r["time_to_95_s"] for r in rows if r["slowdown"] == 1.0 and r["time_to_95_s"]),
        default=None,
    )
    for r in rows:
        twin = next(x for x in rows if x["mode"] == r["mode"] and x["slowdown"] == 1.0)
        r["time_vs_own_all_fast"] = _ratio(r["time_to_95_s"], twin["time_to_95_s"])
        r["time_vs_best_all_fast"] = _ratio(r["time_to_95_s"], fastest)
        r["throughput_vs_own_all_fast"] = _ratio(r["throughput"], twin["throughput"])
        r["fast_wait_vs_own_all_fast"] = _ratio(r["fast_wait_ms"], twin["fast_wait_ms"])
    return rows


def _mean(xs: List[Optional[float]]) -> Optional[float]:
    known = [x for x in xs if x is not None]
    return statistics.mean(known) if known else None


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else a / b


def _fmt(x: Optional[float], spec: str) -> str:
    return "—" if x is None else format(x, spec)


def table(rows: List[dict]) -> str:
    lines = [
        "| mode | slowdown | time to 95% (s) | vs its all-fast | vs best all-fast | final acc "
        "(min) | throughput vs its all-fast | max staleness seen | fast group's PS wait per "
        "step (ms) | vs its all-fast |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {MODES[r['mode']][0]} | {r['slowdown']:g} | {_fmt(r['time_to_95_s'], '.2f')} "
            f"({r['reached']}/{r['runs']}) | {_fmt(r['time_vs_own_all_fast'], '.2f')}x | "
            f"{_fmt(r['time_vs_best_all_fast'], '.2f')}x | {100 * r['final_accuracy']:.2f}% "
            f"({100 * r['final_min']:.2f}%) | {_fmt(r['throughput_vs_own_all_fast'], '.2f')}x | "
            f"{r['max_staleness_seen']} | {_fmt(r['fast_wait_ms'], '.2f')} | "
            f"{_fmt(r['fast_wait_vs_own_all_fast'], '.2f')}x |"
        )
    return "\n".join(lines)


def plot(rows: List[dict], modes: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        xs = [r["slowdown"] for r in mine]
        ax1.plot(xs, [r["throughput_vs_own_all_fast"] for r in mine], marker="o",
                 label=MODES[mode][0])  # fmt: skip
        ax2.plot(xs, [r["time_vs_best_all_fast"] for r in mine], marker="o", label=MODES[mode][0])
    ax1.set_xlabel("slowdown of group 1 (x)")
    ax1.set_ylabel("throughput / its all-fast throughput")
    ax2.set_xlabel("slowdown of group 1 (x)")
    ax2.set_ylabel("time to 95% / best all-fast time")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("digits, 2 groups of 1 rank, one slowed (emulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--slowdowns", default="1,1.5,2,4")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", default=str(RESULTS / "stragglers"))
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        ap.error(f"--modes: unknown {unknown} (known: {', '.join(MODES)})")
    slowdowns = [float(f) for f in args.slowdowns.split(",")]
    if 1.0 not in slowdowns:
        ap.error("--slowdowns must include 1 (the all-fast twin every ratio divides by)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="hvd_ps-stragglers-") as tmp:
        for seed in range(args.seeds):
            for f in slowdowns:
                for mode in modes:
                    out = Path(tmp) / f"{mode}-{f:g}-{seed}.json"
                    result = run_job(MODES[mode][1], f, seed, out, args.timeout)
                    runs.append({"mode": mode, "slowdown": f, "seed": seed, "result": result})
                    t = result["time_to_target_s"]
                    print(f"seed {seed} slowdown {f:g} {mode}: time to 95% "
                          f"{_fmt(t, '.2f')} s, final {100 * result['final_accuracy']:.2f}%",
                          flush=True)  # fmt: skip
    rows = summarize(runs, modes, slowdowns)
    text = table(rows)
    print(text)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=1))
    out.with_suffix(".md").write_text(
        f"# Stragglers: {args.seeds} seed(s), slowdowns {args.slowdowns}\n\n{text}\n"
    )
    plot(rows, modes, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
