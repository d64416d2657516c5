"""A cost model of one training step on a cluster of hosts joined by links of one rate.

Every host has one network interface of ``bandwidth`` bytes/s in each direction (full duplex,
as each end of the emulated links is shaped with ``tc tbf``) into a switch that is never the
bottleneck; ranks on one host talk through shared memory, which the model takes as free. A
step of every method costs the step of the *no-communication bound* (``compute_s``: forward,
backward, the group's shared-memory allreduce and the local update, measured) plus what the
method sends across the links:

* ``horovod``: a ring allreduce of the ``M``-byte gradient over all ``N`` ranks, placed host by
  host, so each host's interface carries one ring edge each way: ``2 (N-1)/N M`` bytes,
  ``2 (N-1)`` latencies, every step.
* ``dist_sync``: MXNet's dist KVStore with every rank a worker and servers on ``server_hosts``
  hosts (keys sharded evenly): every step every worker pushes ``M`` and pulls ``M``.
* ``gradient_push``: hvd_ps with one group per host; the leaders push the group's gradient and
  pull the weights every step (``W`` bytes each way, as below).
* ``model_average`` / ``easgd`` / ``diloco``: the leaders push and pull the ``W``-byte model
  (``W`` = parameters x wire bytes) every ``period`` steps. With ``overlap=tau`` the exchange
  runs behind ``tau`` steps of compute and only what is left of it is waited for.

A PS exchange is a push phase then a pull phase; a phase lasts as long as its busiest interface
needs (:func:`ps_phase`) plus one latency. Bytes on the wire are payload times
:data:`FRAME_OVERHEAD`, the headers interface counters and ``tc tbf`` count on top of it.

:func:`check` compares the model with every point of a results JSON of
``benchmarks/cluster_suite.py``; :func:`plot_scaling` draws its predicted throughput for 8 to
1,024 ranks, labelled as a model, beside the measured points. Run as a script on a results
file to do both::

    python -m benchmarks.model benchmarks/results/cluster_suite.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: bytes on the wire per payload byte. veth segments TCP in 64 KB super-frames (GSO), so the
#: headers cost ~0.1%, not the 4.6% of 1500-byte frames: 12.5 MB sent over TCP between two
#: emulated hosts showed 12,515,284 bytes in the sender's tx counter (handshake included)
FRAME_OVERHEAD = 1.001
EVERY_STEP = ("horovod", "dist_sync", "gradient_push")
PERIODIC = ("model_average", "easgd", "diloco")
METHODS = ("bound",) + EVERY_STEP + PERIODIC


@dataclass(frozen=True)
class Net:
    """``hosts`` hosts of ``ranks_per_host`` ranks; links of ``bandwidth`` bytes/s per
    direction and ``latency`` seconds per message."""

    hosts: int
    ranks_per_host: int
    bandwidth: float
    latency: float = 0.0

    @property
    def ranks(self) -> int:
        return self.hosts * self.ranks_per_host


@dataclass(frozen=True)
class Job:
    """``params`` values of ``value_bytes`` each (``wire_bytes`` each in hvd_ps's model
    exchanges); ``compute_s`` the step time of the no-communication bound."""

    params: int
    compute_s: float
    value_bytes: int = 4
    wire_bytes: int = 4


def rate_bytes(rate: str) -> float:
    """A ``tc`` rate (``1gbit``, ``100mbit``, ``500kbit``, ``8bit``) in bytes per second."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    text = rate.strip().lower()
    for unit, scale in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale / 8
    raise ValueError(f"rate {rate!r}: expected a number and gbit, mbit, kbit or bit")


def ps_phase(
    hosts: int, clients_per_host: int, nbytes: float, server_hosts: int
) -> Tuple[List[float], List[float]]:
    """(upload, download) bytes per host when every client sends ``nbytes`` to servers on the
    first ``server_hosts`` hosts, sharded evenly (a push; a pull is the same with the two
    directions swapped). Traffic between a client and a server on its own host stays there."""
    if not 1 <= server_hosts <= hosts:
        raise ValueError(f"server_hosts must be in 1..{hosts}, got {server_hosts}")
    shard = nbytes / server_hosts
    up, down = [0.0] * hosts, [0.0] * hosts
    for h in range(hosts):
        remote = server_hosts - (1 if h < server_hosts else 0)
        up[h] = clients_per_host * shard * remote
    for s in range(server_hosts):
        down[s] = (hosts - 1) * clients_per_host * shard
    return up, down


def exchange(net: Net, clients_per_host: int, nbytes: float, server_hosts: int) -> Dict:
    """One push phase and one pull phase: bytes per host (each direction) and seconds."""
    up, down = ps_phase(net.hosts, clients_per_host, nbytes * FRAME_OVERHEAD, server_hosts)
    busiest = max(max(up), max(down))
    phase = (busiest / net.bandwidth + net.latency) if busiest > 0 else 0.0
    # the pull sends back what the push received: host h uploads down[h], downloads up[h]
    sent = [u + d for u, d in zip(up, down)]
    return {"seconds": 2 * phase, "sent": sent}


def step(
    method: str,
    net: Net,
    job: Job,
    period: int = 1,
    overlap: int = 0,
    server_hosts: int = 1,
) -> Dict:
    """The model of one step: ``step_s`` (seconds per step, averaged over a period),
    ``comm_s`` (communication per step that is not hidden), ``sent`` (bytes each host sends
    per step, averaged over a period) and ``total_bytes`` (their sum: what crossed the links)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if period < 1 or not 0 <= overlap < period:
        raise ValueError(f"need period >= 1 and 0 <= overlap < period, got {period}, {overlap}")
    grad = job.params * job.value_bytes
    if method == "bound" or net.hosts == 1:
        comm, sent = 0.0, [0.0] * net.hosts
    elif method == "horovod":
        n = net.ranks
        edge = 2 * (n - 1) / n * grad * FRAME_OVERHEAD
        comm = edge / net.bandwidth + 2 * (n - 1) * net.latency
        sent = [edge] * net.hosts
    elif method == "dist_sync":
        x = exchange(net, net.ranks_per_host, grad, server_hosts)
        comm, sent = x["seconds"], x["sent"]
    elif method == "gradient_push":  # hvd_ps's wire dtype applies to the gradient too
        x = exchange(net, 1, job.params * job.wire_bytes, server_hosts)
        comm, sent = x["seconds"], x["sent"]
    else:
        x = exchange(net, 1, job.params * job.wire_bytes, server_hosts)
        hidden = overlap * job.compute_s
        comm = max(0.0, x["seconds"] - hidden) / period
        sent = [b / period for b in x["sent"]]
    return {
        "step_s": job.compute_s + comm,
        "comm_s": comm,
        "sent": sent,
        "total_bytes": sum(sent),
    }


# -- against measurements -------------------------------------------------------------------
def _point(run: Dict, bound: Dict) -> Dict:
    net = Net(
        hosts=run["hosts"],
        ranks_per_host=run["ranks_per_host"],
        bandwidth=rate_bytes(run["link"]),
        latency=run.get("latency_s", 0.0),
    )
    job = Job(
        params=run["params"],
        compute_s=bound["step_s"],
        wire_bytes=run.get("wire_bytes", 4),
    )
    return step(
        run["method"],
        net,
        job,
        period=run.get("period", 1),
        overlap=run.get("overlap", 0),
        server_hosts=run.get("server_hosts", 1),
    )


def check(runs: Sequence[Dict]) -> List[Dict]:
    """The model against every measured run (the results JSON's ``runs``), one row each.

    The bound of the same cluster and link supplies ``compute_s``, so the bound itself is the
    calibration point (error 0 by construction, marked ``calibration``). Errors are relative,
    (model - measured) / measured, for step time and for the bytes that crossed the links."""
    rows = []
    for run in runs:
        bound = next(
            (
                b
                for b in runs
                if b["method"] == "bound"
                and (b["hosts"], b["ranks_per_host"], b["link"])
                == (run["hosts"], run["ranks_per_host"], run["link"])
            ),
            None,
        )
        if bound is None:
            continue
        got = _point(run, bound)
        measured_bytes = run.get("link_bytes_per_step")
        rows.append(
            {
                "name": run["name"],
                "cluster": f"{run['hosts']}x{run['ranks_per_host']}",
                "link": run["link"],
                "measured_step_s": run["step_s"],
                "model_step_s": got["step_s"],
                "step_error": (got["step_s"] - run["step_s"]) / run["step_s"],
                "measured_bytes": measured_bytes,
                "model_bytes": got["total_bytes"],
                # none where the model sends nothing (the bound: only Horovod's control bytes)
                "bytes_error": (
                    (got["total_bytes"] - measured_bytes) / measured_bytes
                    if measured_bytes and got["total_bytes"]
                    else None
                ),
                "calibration": run is bound,
            }
        )
    return rows


def check_markdown(rows: Sequence[Dict]) -> str:
    out = [
        "| run | cluster | link | measured s/step | model s/step | error | measured MB/step "
        "| model MB/step | error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = "" if r["measured_bytes"] is None else f"{r['measured_bytes'] / 1e6:.1f}"
        be = "" if r["bytes_error"] is None else f"{r['bytes_error'] * 100:+.0f}%"
        err = "calibration" if r["calibration"] else f"{r['step_error'] * 100:+.0f}%"
        out.append(
            f"| {r['name']} | {r['cluster']} | {r['link']} | {r['measured_step_s']:.3f} | "
            f"{r['model_step_s']:.3f} | {err} | {mb} | {r['model_bytes'] / 1e6:.1f} | {be} |"
        )
    fitted = [abs(r["step_error"]) for r in rows if not r["calibration"]]
    if fitted:
        out += ["", f"Largest step-time error: {max(fitted) * 100:.0f}% over {len(fitted)} runs."]
    return "\n".join(out) + "\n"


# -- projection -----------------------------------------------------------------------------
def scaling(
    ranks: Sequence[int],
    ranks_per_host: int,
    bandwidth: float,
    job: Job,
    batch: int,
    period: int = 16,
    overlap: int = 8,
    latency: float = 50e-6,
) -> Dict[str, List[float]]:
    """Predicted samples/s per method for each rank count (``batch`` samples per rank and
    step; servers on every host for dist_sync and hvd_ps)."""
    curves: Dict[str, List[float]] = {}
    lines = {
        "bound": ("bound", 1, 0),
        "Horovod": ("horovod", 1, 0),
        "dist_sync": ("dist_sync", 1, 0),
        f"hvd_ps ModelAverage k={period}": ("model_average", period, 0),
        f"hvd_ps ModelAverage k={period} overlap={overlap}": ("model_average", period, overlap),
    }
    for label, (method, k, tau) in lines.items():
        curves[label] = []
        for n in ranks:
            hosts = max(1, math.ceil(n / ranks_per_host))
            net = Net(hosts, ranks_per_host, bandwidth, latency)
            t = step(method, net, job, period=k, overlap=tau, server_hosts=hosts)["step_s"]
            curves[label].append(net.ranks * batch / t)
    return curves


def plot_scaling(results: Dict, path: Path, ranks_per_host: int = 4) -> None:
    """Predicted samples/s for 8 to 1,024 ranks at each measured link rate, with the measured
    points of ``results`` beside them (marked as measurements)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    links = sorted({r["link"] for r in runs}, key=rate_bytes, reverse=True)
    ranks = [8 * 2**i for i in range(8)]
    fig, axes = plt.subplots(1, len(links), figsize=(6 * len(links), 4.2), squeeze=False)
    for ax, link in zip(axes[0], links):
        bound = [r for r in runs if r["method"] == "bound" and r["link"] == link]
        if not bound:
            continue
        ref = bound[0]
        job = Job(
            params=ref["params"], compute_s=ref["step_s"], wire_bytes=ref.get("wire_bytes", 4)
        )
        a = results.get("args", {})
        period, tau = a.get("period", 16), a.get("overlap", 8) or 0
        tau = tau if tau < period else period - 1
        curves = scaling(ranks, ranks_per_host, rate_bytes(link), job, ref["batch"], period, tau)
        for label, ys in curves.items():
            ax.plot(ranks, ys, label=f"model: {label}", linestyle="--" if "bound" in label else "-")
        markers = "os^vD<>ph*"
        for i, r in enumerate(r for r in runs if r["link"] == link):
            label = f"measured {r['hosts']}x{r['ranks_per_host']}: {r['name']}"
            ax.scatter([r["hosts"] * r["ranks_per_host"]], [r["samples_per_s"]], s=22, zorder=3,
                       marker=markers[i % len(markers)], label=label)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks")
        ax.set_ylabel("samples/s")
        ax.set_title(
            f"cost model (lines), {link} links, {ranks_per_host} ranks/host, "
            f"{ref['params'] / 1e6:.1f}M parameters,\ncompute = the measured bound's "
            f"{ref['step_s']:.2f} s/step; servers on every host",
            fontsize=9,
        )
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Check the cost model against a results JSON.")
    ap.add_argument("results", help="a JSON written by benchmarks/cluster_suite.py")
    ap.add_argument("--plot", default=None, help="write the scaling plot here")
    args = ap.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    print(check_markdown(check(results["runs"])))
    if args.plot:
        plot_scaling(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
