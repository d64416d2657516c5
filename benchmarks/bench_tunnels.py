"""What the TLS tunnels cost: the cluster suite's overlapped runs with and without them, side by
side on the same emulated cluster.

For each of ``--clusters`` and ``--links`` (benchmarks/star.py), ``--repeats`` times: one job of
the cluster suite (benchmarks/cluster_suite.py: the no-communication bound, then every method of
``--methods`` overlapped at ``--period``/``--overlap``) with ps-lite's traffic on the network as
it was before the tunnels, and one with every ps-lite node on loopback and the traffic between
hosts through one tunnel endpoint per host (what ``hvdps-run`` starts for a job on several
hosts). The order alternates from repeat to repeat (off, on; then on, off), so that a drift of
the machine touches both alike. Reported per method: the step time without and with the
tunnels (medians over the repeats), their ratio in each repeat (the spread), and both
efficiencies against the bound of the same job. Any cluster suite flag not named here keeps the
suite's default (``--hidden`` 25.5M parameters, ``--batch`` 32, ``--steps`` 16).

Needs root. Writes ``--out``.json and .md. Full run (about 40 min on two cores)::

    python -m benchmarks.bench_tunnels

Smoke run::

    python -m benchmarks.bench_tunnels --clusters 2x2 --links 1gbit --hidden 256,256 \\
        --period 2 --overlap 1 --steps 4 --repeats 1 --out /tmp/tunnels
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks import cluster_suite, report
from benchmarks.star import StarCluster

RESULTS = cluster_suite.RESULTS


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="2x2,4x1", help="HOSTSxRANKS, comma separated")
    ap.add_argument("--links", default="1gbit,100mbit", help="tc rates, comma separated")
    ap.add_argument("--methods", default="model_average,easgd,diloco")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hidden", default="4096,4096,2048")
    ap.add_argument("--period", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=None, help="default: period - 1")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--wire", default="float32", choices=("float32", "float16", "int8", "int4"))
    ap.add_argument("--out", default=str(RESULTS / "tunnels"))
    mine = ap.parse_args(argv)
    overlap = mine.period - 1 if mine.overlap is None else mine.overlap
    # the suite's own settings, with ours on top
    args = cluster_suite.parser().parse_args(
        ["--methods", "bound," + mine.methods, "--hidden", mine.hidden, "--period",
         str(mine.period), "--overlap", str(overlap), "--steps", str(mine.steps),
         "--wire", mine.wire, "--no-accuracy"]
    )  # fmt: skip
    args.methods = [m for m in args.methods.split(",") if m]
    args.tunnels = False
    args.bench = mine
    return args


def overlapped(args: argparse.Namespace) -> List[Dict]:
    """The bound and the overlapped runs of the suite's plan."""
    return [s for s in cluster_suite.plan(args, True) if s["overlap"] or s["method"] == "bound"]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    bench = args.bench
    if os.geteuid() != 0:
        sys.exit("bench_tunnels: needs root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    specs = overlapped(args)
    clusters = [tuple(int(v) for v in c.split("x")) for c in bench.clusters.split(",")]
    rows: List[Dict] = []
    #: per cluster and link, per tunneled job: the stunnel processes' CPU seconds (all hosts)
    #: and the bytes that crossed the links
    cpu: Dict = {}
    start, port = time.time(), 20000
    with tempfile.TemporaryDirectory(prefix="hvdps-tunnels-") as tmpdir:
        tmp = Path(tmpdir)
        for hosts, rpn in clusters:
            for link in bench.links.split(","):
                with StarCluster(hosts=hosts, rate=link) as cluster:
                    got: Dict[bool, List[Dict]] = {False: [], True: []}
                    cpu[(hosts, rpn, link)] = []
                    for repeat in range(bench.repeats):
                        for tunnels in (False, True) if repeat % 2 == 0 else (True, False):
                            port += 64
                            done = cluster_suite.run_job(cluster, specs, args, rpn, link, port,
                                                         tmp, tunnels)  # fmt: skip
                            measured = [report.throughput_row(s, d, hosts, rpn, link, args)
                                        for s, d in zip(specs, done)]  # fmt: skip
                            steps = {r["name"]: r["step_s"] for r in measured}
                            got[tunnels].append(steps)
                            link_bytes = sum(r["job_link_bytes"] for r in measured)
                            if tunnels:
                                cpu[(hosts, rpn, link)].append((tunnel_cpu(tmp, port), link_bytes))
                            print(f"[{time.time() - start:6.0f} s] {hosts}x{rpn} {link} repeat "
                                  f"{repeat} tunnels {'on' if tunnels else 'off'}: "
                                  + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items()),
                                  flush=True)  # fmt: skip
                    rows += summarize(got, specs, hosts, rpn, link)
                    used = cpu[(hosts, rpn, link)]
                    for r in rows[-len(specs) + 1 :]:
                        r["tunnel_cpu_s_per_gb"] = [c / (b / 1e9) for c, b in used if b]
    write(rows, bench, Path(bench.out), time.time() - start)
    return 0


def tunnel_cpu(tmp: Path, port: int) -> float:
    """CPU seconds the stunnel processes of the job at ``port`` used, all hosts (each tunnel
    endpoint prints it when it stops; the suite keeps its output in a log per host)."""
    total = 0.0
    for log in tmp.glob(f"*_{port}_tunnels.tunnel*.log"):
        found = re.search(r"stunnel used ([\d.]+) s of CPU", log.read_text())
        if found is None:
            raise RuntimeError(f"{log} does not say what stunnel used:\n{log.read_text()}")
        total += float(found.group(1))
    return total


def summarize(got: Dict[bool, List[Dict]], specs: List[Dict], hosts: int, rpn: int,
              link: str) -> List[Dict]:  # fmt: skip
    """Per method: median step times off and on, each repeat's ratio, the efficiencies."""
    out = []
    for s in specs:
        if s["method"] == "bound":
            continue
        name = s["name"]
        off = [r[name] for r in got[False]]
        on = [r[name] for r in got[True]]
        ratios = [b / a for a, b in zip(off, on)]
        eff_off = [r["bound"] / r[name] for r in got[False]]
        eff_on = [r["bound"] / r[name] for r in got[True]]
        out.append({
            "cluster": f"{hosts}x{rpn}", "link": link, "run": name,
            "step_off_s": statistics.median(off), "step_on_s": statistics.median(on),
            "ratios": ratios, "ratio": statistics.median(ratios),
            "efficiency_off": statistics.median(eff_off),
            "efficiency_on": statistics.median(eff_on),
        })  # fmt: skip
    return out


def write(rows: List[Dict], bench: argparse.Namespace, out: Path, took: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(bench), "rows": rows,
                                                    "took_s": took}, indent=1))  # fmt: skip
    lines = [
        "# The tunnels' cost",
        "",
        f"`python -m benchmarks.bench_tunnels` ({bench.repeats} repeats, period {bench.period},"
        f" {bench.steps} timed steps, MLP {bench.hidden}, wire {bench.wire}; {took / 60:.0f}"
        " min). Step time: the slowest rank's mean over the window, median over the repeats;"
        " cost: step time with tunnels / without, per repeat (side by side on one cluster).",
        "",
        "| cluster | link | run | step off (s) | step on (s) | cost (repeats) | eff. off "
        "| eff. on | stunnel CPU s per GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = ", ".join(f"{x:.3f}" for x in r["ratios"])
        lines.append(
            f"| {r['cluster']} | {r['link']} | {r['run']} | {r['step_off_s']:.3f} | "
            f"{r['step_on_s']:.3f} | {r['ratio']:.3f} ({spread}) | {r['efficiency_off']:.2f} | "
            f"{r['efficiency_on']:.2f} | "
            + ", ".join(f"{x:.2f}" for x in r["tunnel_cpu_s_per_gb"])
            + " |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
