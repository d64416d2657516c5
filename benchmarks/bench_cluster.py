"""Where the network is slow: Horovod alone vs hvd_ps on an emulated two-host cluster.

Two network namespaces with 2 ranks each (see benchmarks/cluster.py), joined by a link shaped
to ``--rate`` (default 1 Gbit/s). Every method trains the digits example with a wide MLP
(``--hidden``, default 1024,1024: 1.1M parameters, 4.4 MB) for the same number of epochs, back to
back in one run, and reports the wall time of training and the global model's test accuracy:

* ``horovod``: Horovod allreduce over all 4 ranks every step (the link carries every step);
* hvd_ps with one group per host (shared-memory allreduce inside a host, the PS tier across):
  ``gradient_push`` (every step, the paper's baseline), ``model_average``, ``easgd``,
  ``diloco`` (every ``--period`` steps).

Needs root (it creates and removes the namespaces). Usage::

    python benchmarks/bench_cluster.py [--rate 1gbit] [--epochs 8] [--period 8] [--repeats 1]

Writes benchmarks/results/cluster_<rate>.json, .md and .png.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from cluster import Cluster  # noqa: E402

METHODS = ("horovod", "gradient_push", "model_average", "easgd", "diloco")


def run(cluster: Cluster, method: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    argv = [
        sys.executable,
        str(ROOT / "examples" / "train_digits.py"),
        "--sync",
        method,
        "--epochs",
        str(args.epochs),
        "--hidden",
        args.hidden,
        "--json",
        out,
        "--quiet",
    ]
    if method != "gradient_push" and method != "horovod":
        argv += ["--period", str(args.period)]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HVD_PS_TIMEOUT="600",
        PYTHONPATH=str(ROOT),
        MXNET_CPU_WORKER_NTHREADS="1",
        # 4 ranks on few cores: spinning ranks steal the cores of those computing
        OMPI_MCA_mpi_yield_when_idle="1",
    )
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    cmd = ["timeout", "-k", "10", "1500"] + cluster.mpirun(
        argv,
        slots=2,
        env=[
            "HVD_PS_TIMEOUT",
            "OMPI_ALLOW_RUN_AS_ROOT",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
            "OMPI_MCA_mpi_yield_when_idle",
        ],
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        with open(out) as f:
            res = json.load(f)
        res["final_test_accuracy"]  # noqa: B018 - a missing key means the job failed
    except (OSError, ValueError):
        sys.exit(
            f"{method} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    finally:
        if os.path.exists(out):
            os.remove(out)
    return {"accuracy": res["final_test_accuracy"], "time_s": res["train_time_s"]}


def markdown(rows: list, args: argparse.Namespace) -> str:
    base = next(r for r in rows if r["method"] == "horovod")["time_s"]
    out = [
        f"# Digits on an emulated 2-host cluster, link shaped to {args.rate}",
        "",
        f"2 hosts x 2 ranks (network namespaces, `tc tbf`), MLP 64-{args.hidden.replace(',', '-')}"
        f"-10, {args.epochs} epochs, period {args.period} for the PS strategies; one group per "
        f"host. Median of {args.repeats} run(s); methods run back to back in one session; "
        "`OMPI_MCA_mpi_yield_when_idle=1` (more ranks than cores).",
        "",
        "| method | test accuracy | training time (s) | speed-up vs Horovod |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['accuracy']:.4f} | {r['time_s']:.1f} | "
            f"{base / r['time_s']:.2f}x |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["method"] for r in rows]
    bars = ax.bar(names, [r["time_s"] for r in rows], color="#4a7ab5")
    for bar, r in zip(bars, rows):
        ax.annotate(
            f"{r['accuracy'] * 100:.1f}%",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_ylabel("training time (s)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", default="1gbit", help="tc rate of the inter-host link")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--period", type=int, default=8)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    methods = args.methods.split(",")
    samples: dict = {m: [] for m in methods}
    with Cluster(rate=args.rate) as cluster:
        for rep in range(args.repeats):
            for m in methods:
                res = run(cluster, m, args)
                samples[m].append(res)
                print(
                    f"[{rep + 1}/{args.repeats}] {m}: accuracy {res['accuracy']:.4f}, "
                    f"{res['time_s']:.1f} s",
                    flush=True,
                )
    rows = []
    for m in methods:
        rows.append(
            {
                "method": m,
                "time_s": statistics.median(r["time_s"] for r in samples[m]),
                "accuracy": statistics.median(r["accuracy"] for r in samples[m]),
            }
        )
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"cluster_{args.rate}"
    stem.with_suffix(".json").write_text(
        json.dumps({"args": vars(args), "rows": rows, "samples": samples}, indent=1)
    )
    md = markdown(rows, args)
    stem.with_suffix(".md").write_text(md)
    plot(rows, stem.with_suffix(".png"), f"digits, 2 hosts x 2 ranks, link {args.rate}")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
