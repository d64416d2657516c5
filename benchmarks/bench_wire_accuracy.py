"""What the compressed wire costs in accuracy, and what error feedback buys: digits, every
strategy, every wire, several seeds, side by side in one run.

Every run is examples/train_digits.py (MLP 64-128-64-10, local SGD lr 0.1 momentum 0.9, batch 32
per rank, 12 epochs) with 4 ranks in 2 groups on the embedded PS tier, one per (strategy, wire,
seed); the wires are ``float32``, ``int8`` and ``int4``, and ``int8`` / ``int4`` again with
``HVD_PS_WIRE_FEEDBACK=0`` (the leaders keep no residual: what a push's quantization drops is
lost). Runs are interleaved seed by seed, so that load from elsewhere hits every wire alike.
Reported per strategy and wire: the mean final test accuracy of the global model over the
seeds with its spread (min..max), the mean of the best epoch, and the PS bytes a leader pushed
and pulled (``trainer.stats()``).

    python benchmarks/bench_wire_accuracy.py                 # writes results/wire_accuracy.*
    python benchmarks/bench_wire_accuracy.py --seeds 2 --strategies diloco
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_digits.py"
RESULTS = ROOT / "benchmarks" / "results"
RANKS, GROUP_SIZE = 4, 2

STRATEGIES = {
    "gradient_push": ["--sync", "gradient_push"],
    "model_average": ["--sync", "model_average"],
    "easgd": ["--sync", "easgd"],
    "diloco": ["--sync", "diloco"],
    "diloco_async": ["--sync", "diloco", "--mode", "async"],
}
#: name -> (HVD_PS_WIRE_DTYPE, error feedback)
WIRES = {
    "float32": ("float32", True),
    "int8": ("int8", True),
    "int4": ("int4", True),
    "int8 without feedback": ("int8", False),
    "int4 without feedback": ("int4", False),
}


def one_run(strategy: str, wire: str, seed: int, epochs: int, tmp: Path) -> dict:
    dtype, feedback = WIRES[wire]
    out = tmp / f"{strategy}-{dtype}-{int(feedback)}-{seed}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1",
               OMPI_MCA_mpi_yield_when_idle="1", HVD_PS_WIRE_DTYPE=dtype,
               HVD_PS_WIRE_FEEDBACK="1" if feedback else "0")  # fmt: skip
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    cmd = ["horovodrun", "-np", str(RANKS), sys.executable, str(EXAMPLE),
           *STRATEGIES[strategy], "--group-size", str(GROUP_SIZE), "--epochs", str(epochs),
           "--seed", str(seed), "--progress", "none", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} {wire} seed {seed} failed:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")  # fmt: skip
    m = json.loads(out.read_text())
    stats = m["stats"]
    return {"final": m["final_test_accuracy"], "best": m["best_test_accuracy"],
            "pushed": stats.get("bytes_pushed", 0), "pulled": stats.get("bytes_pulled", 0),
            "train_s": m["train_time_s"]}  # fmt: skip


def markdown(rows: list, meta: dict) -> str:
    lines = [
        "# The compressed wire on digits: accuracy and bytes",
        "",
        f"examples/train_digits.py, {RANKS} ranks in {RANKS // GROUP_SIZE} groups, "
        f"{meta['epochs']} epochs, seeds {meta['seeds']}; final = test accuracy of the global "
        "model after the last epoch (mean, and min..max over the seeds); best = the best "
        "epoch's (mean); bytes = what global rank 0's leader pushed and pulled over the run "
        f"(`trainer.stats()`). Run {meta['started']}, {meta['minutes']:.1f} min.",
        "",
        "| strategy | wire | final % | spread | best % | MB pushed | MB pulled | bytes / float32 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['bytes_ratio']:.3f}" if r["bytes_ratio"] is not None else ""
        lines.append(
            f"| {r['strategy']} | {r['wire']} | {100 * r['final']:.2f} | "
            f"{100 * r['min']:.2f}..{100 * r['max']:.2f} | {100 * r['best']:.2f} | "
            f"{r['pushed'] / 1e6:.2f} | {r['pulled'] / 1e6:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--wires", default=",".join(WIRES), help="of: " + ", ".join(WIRES))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", default=str(RESULTS / "wire_accuracy"))
    args = ap.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    wires = [w.strip() for w in args.wires.split(",") if w.strip()]
    bad = [s for s in strategies if s not in STRATEGIES] + [w for w in wires if w not in WIRES]
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    got: dict = {}
    with tempfile.TemporaryDirectory(prefix="hvdps-wire-acc-") as tmp:
        for seed in range(args.seeds):
            for s in strategies:
                for w in wires:
                    r = one_run(s, w, seed, args.epochs, Path(tmp))
                    got.setdefault((s, w), []).append(r)
                    print(f"[{time.time() - t0:6.0f} s] {s} {w} seed {seed}: "
                          f"{100 * r['final']:.2f}%", flush=True)  # fmt: skip
    rows = []
    for s in strategies:
        base = got.get((s, "float32"))
        for w in wires:
            runs = got[(s, w)]
            finals = [r["final"] for r in runs]
            row = {"strategy": s, "wire": w, "final": statistics.mean(finals),
                   "min": min(finals), "max": max(finals),
                   "best": statistics.mean(r["best"] for r in runs),
                   "pushed": statistics.mean(r["pushed"] for r in runs),
                   "pulled": statistics.mean(r["pulled"] for r in runs), "runs": runs}  # fmt: skip
            total = row["pushed"] + row["pulled"]
            ref = statistics.mean(r["pushed"] + r["pulled"] for r in base) if base else 0
            row["bytes_ratio"] = total / ref if ref else None
            rows.append(row)
    meta = {"epochs": args.epochs, "seeds": args.seeds, "started": started,
            "minutes": (time.time() - t0) / 60}  # fmt: skip
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    Path(args.out + ".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
