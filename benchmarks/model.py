"""A cost model of one training step on a cluster of hosts joined by links of one rate.

Every host has one network interface of ``bandwidth`` bytes/s in each direction (full duplex,
as each end of the emulated links is shaped with ``tc tbf``) into a switch that is never the
bottleneck; ranks on one host talk through shared memory, which the model takes as free. A
step of every method costs the step of the *no-communication bound* (``compute_s``: forward,
backward, the group's shared-memory allreduce and the local update, measured) plus what the
method sends across the links:

* ``horovod``: Open MPI's allreduce of the ``M``-byte gradient over all ``N`` ranks, placed
  host by host. Its large-message algorithm (recursive halving, then doubling, nearest
  partners first) keeps the steps between ranks of one host inside it, so each host's
  interface carries ``2 (H-1)/H M`` bytes each way for ``H`` hosts, as a ring over the hosts
  would (counted: 102 MB per host per step on 2 x 2 and 153 MB on 4 x 1 for 102 MB of
  gradient), ``2 log2 N`` latencies, every step.
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

No transport drives a link at its rate, and moving bytes costs processor time. So each of the
three transports (:data:`TRANSPORTS`: Open MPI for Horovod, MXNet's stock KVStore for
dist_sync, hvd_ps's servers) has two constants (:class:`Transport`): the fraction of the link
rate it reaches, and the processor seconds per byte it sends. On the emulated cluster every
host shares this machine's cores, so the processor time of all hosts' bytes adds up; on a
cluster of real hosts each pays for its own (``Net.shared_cpu``). A periodic exchange hidden
behind ``tau`` steps hides only its time on the link: its processor time is taken from the
compute it runs beside. The constants are fitted (:func:`calibrate`, least squares) to one
results file, ``results/cluster_suite_4x1_run1.json``; :func:`check` reports the model against
the runs of any other file, which the fit has not seen. (A plain TCP stream between two
emulated hosts reaches 0.96 of the shaped rate, so the gaps are the transports', not the
links'.)

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

import numpy as np

#: bytes on the wire per payload byte. veth segments TCP in 64 KB super-frames (GSO), so the
#: headers cost ~0.1%, not the 4.6% of 1500-byte frames: 12.5 MB sent over TCP between two
#: emulated hosts showed 12,515,284 bytes in the sender's tx counter (handshake included)
FRAME_OVERHEAD = 1.001
EVERY_STEP = ("horovod", "dist_sync", "gradient_push")
PERIODIC = ("model_average", "easgd", "diloco")
METHODS = ("bound",) + EVERY_STEP + PERIODIC


@dataclass(frozen=True)
class Transport:
    """How one transport uses a link: it reaches ``efficiency`` of the link rate and spends
    ``cpu_s_per_byte`` processor seconds per byte it sends."""

    efficiency: float
    cpu_s_per_byte: float


#: fitted by ``python -m benchmarks.model --calibrate results/cluster_suite_4x1_run1.json``
#: (4 hosts x 1 rank at 1 Gbit/s and 100 Mbit/s; hvd_ps from its three blocking strategies)
TRANSPORTS: Dict[str, Transport] = {
    "mpi": Transport(efficiency=0.565, cpu_s_per_byte=3.2e-12),
    "stock_ps": Transport(efficiency=0.532, cpu_s_per_byte=0.0),
    "hvd_ps": Transport(efficiency=0.736, cpu_s_per_byte=1.12e-9),
}
TRANSPORT_OF = {"horovod": "mpi", "dist_sync": "stock_ps", "gradient_push": "hvd_ps",
                "model_average": "hvd_ps", "easgd": "hvd_ps", "diloco": "hvd_ps"}  # fmt: skip


@dataclass(frozen=True)
class Net:
    """``hosts`` hosts of ``ranks_per_host`` ranks; links of ``bandwidth`` bytes/s per
    direction and ``latency`` seconds per message; ``shared_cpu``: the hosts share one
    machine's cores (the emulated cluster), so their processor time per byte adds up."""

    hosts: int
    ranks_per_host: int
    bandwidth: float
    latency: float = 0.0
    shared_cpu: bool = True

    @property
    def ranks(self) -> int:
        return self.hosts * self.ranks_per_host


@dataclass(frozen=True)
class Job:
    """``params`` values of ``value_bytes`` each (``wire_bytes`` each on hvd_ps's and
    Horovod's wire, which can be float16; the stock KVStore sends ``value_bytes``);
    ``compute_s`` the step time of the no-communication bound."""

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


def exchange(net: Net, clients_per_host: int, nbytes: float, server_hosts: int,
             transport: Transport) -> Dict:  # fmt: skip
    """One push phase and one pull phase: bytes each host sends, seconds on the link
    (``link_s``), processor seconds (``cpu_s``) and their sum (``seconds``)."""
    up, down = ps_phase(net.hosts, clients_per_host, nbytes * FRAME_OVERHEAD, server_hosts)
    busiest = max(max(up), max(down))
    phase = (busiest / (transport.efficiency * net.bandwidth) + net.latency) if busiest else 0.0
    # the pull sends back what the push received: host h uploads down[h], downloads up[h]
    sent = [u + d for u, d in zip(up, down)]
    cpu = transport.cpu_s_per_byte * (sum(sent) if net.shared_cpu else max(sent))
    return {"link_s": 2 * phase, "cpu_s": cpu, "seconds": 2 * phase + cpu, "sent": sent}


def step(
    method: str,
    net: Net,
    job: Job,
    period: int = 1,
    overlap: int = 0,
    server_hosts: int = 1,
    transports: Optional[Dict[str, Transport]] = None,
) -> Dict:
    """The model of one step: ``step_s`` (seconds per step, averaged over a period),
    ``comm_s`` (communication per step that is not hidden), ``sent`` (bytes each host sends
    per step, averaged over a period) and ``total_bytes`` (their sum: what crossed the links).
    ``transports`` defaults to :data:`TRANSPORTS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if period < 1 or not 0 <= overlap < period:
        raise ValueError(f"need period >= 1 and 0 <= overlap < period, got {period}, {overlap}")
    tr = (transports or TRANSPORTS)[TRANSPORT_OF.get(method, "mpi")]
    grad = job.params * job.value_bytes
    if method == "bound" or net.hosts == 1:
        comm, sent = 0.0, [0.0] * net.hosts
    elif method == "horovod":  # its wire: float16 with hvd.Compression.fp16
        edge = 2 * (net.hosts - 1) / net.hosts * job.params * job.wire_bytes * FRAME_OVERHEAD
        link = edge / (tr.efficiency * net.bandwidth) + 2 * math.log2(net.ranks) * net.latency
        cpu = tr.cpu_s_per_byte * edge * (net.hosts if net.shared_cpu else 1)
        comm, sent = link + cpu, [edge] * net.hosts
    elif method == "dist_sync":
        x = exchange(net, net.ranks_per_host, grad, server_hosts, tr)
        comm, sent = x["seconds"], x["sent"]
    elif method == "gradient_push":  # hvd_ps's wire dtype applies to the gradient too
        x = exchange(net, 1, job.params * job.wire_bytes, server_hosts, tr)
        comm, sent = x["seconds"], x["sent"]
    else:  # overlap hides the link time behind compute, not the processor time
        x = exchange(net, 1, job.params * job.wire_bytes, server_hosts, tr)
        comm = (x["cpu_s"] + max(0.0, x["link_s"] - overlap * job.compute_s)) / period
        sent = [b / period for b in x["sent"]]
    return {
        "step_s": job.compute_s + comm,
        "comm_s": comm,
        "sent": sent,
        "total_bytes": sum(sent),
    }


# -- against measurements -------------------------------------------------------------------
def _bound(run: Dict, runs: Sequence[Dict]) -> Optional[Dict]:
    """The bound of ``run``'s cluster and link in ``runs`` (its compute), if there is one."""
    key = (run["hosts"], run["ranks_per_host"], run["link"])
    return next(
        (b for b in runs if b["method"] == "bound"
         and (b["hosts"], b["ranks_per_host"], b["link"]) == key), None,
    )  # fmt: skip


def _point(run: Dict, bound: Dict, transports: Optional[Dict[str, Transport]] = None) -> Dict:
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
        transports=transports,
    )


def calibrate(runs: Sequence[Dict]) -> Dict[str, Transport]:
    """The two constants of every transport, fitted by least squares to the blocking runs of
    ``runs`` (for hvd_ps its periodic strategies): a run's communication per period,
    ``(step - bound step) x period``, is ``link bytes / (efficiency x rate) + cpu_s_per_byte x
    bytes sent``. A negative processor cost is fitted as zero."""
    unit_link = {t: Transport(1.0, 0.0) for t in ("mpi", "stock_ps", "hvd_ps")}
    unit_cpu = {t: Transport(math.inf, 1.0) for t in unit_link}
    fitted = {}
    for name in unit_link:
        rows, ys = [], []
        for run in runs:
            m, bound = run["method"], _bound(run, runs)
            if bound is None or TRANSPORT_OF.get(m) != name or run.get("overlap", 0):
                continue
            if name == "hvd_ps" and m not in PERIODIC:
                continue
            k = run.get("period", 1)
            rows.append([_point(run, bound, unit_link)["comm_s"] * k,
                         _point(run, bound, unit_cpu)["comm_s"] * k])  # fmt: skip
            ys.append((run["step_s"] - bound["step_s"]) * k)
        if not rows:
            continue
        a, y = np.array(rows), np.array(ys)
        inv_eff, cpu = np.linalg.lstsq(a, y, rcond=None)[0]
        if cpu < 0:
            inv_eff, cpu = float(a[:, 0] @ y / (a[:, 0] @ a[:, 0])), 0.0
        fitted[name] = Transport(efficiency=float(1 / inv_eff), cpu_s_per_byte=float(cpu))
    return fitted


def check(runs: Sequence[Dict], transports: Optional[Dict[str, Transport]] = None) -> List[Dict]:
    """The model against every measured run (the results JSON's ``runs``), one row each.

    The bound of the same cluster and link supplies ``compute_s``, so the bound itself is the
    calibration point (error 0 by construction, marked ``calibration``). Errors are relative,
    (model - measured) / measured, for step time and for the bytes that crossed the links."""
    rows = []
    for run in runs:
        bound = _bound(run, runs)
        if bound is None:
            continue
        got = _point(run, bound, transports)
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
    transports: Optional[Dict[str, Transport]] = None,
) -> Dict[str, List[float]]:
    """Predicted samples/s per method for each rank count (``batch`` samples per rank and
    step; servers on every host for dist_sync and hvd_ps), on real hosts: each host pays the
    processor time of its own bytes, at this machine's cost per byte."""
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
            net = Net(hosts, ranks_per_host, bandwidth, latency, shared_cpu=False)
            t = step(method, net, job, period=k, overlap=tau, server_hosts=hosts,
                     transports=transports)["step_s"]  # fmt: skip
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
    ap.add_argument("--calibrate", action="store_true",
                    help="fit the transports' constants to this file and print them")  # fmt: skip
    args = ap.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    if args.calibrate:
        for name, t in calibrate(results["runs"]).items():
            print(f"{name}: efficiency {t.efficiency:.3f}, cpu_s_per_byte {t.cpu_s_per_byte:.3g}")
        return 0
    print(check_markdown(check(results["runs"])))
    if args.plot:
        plot_scaling(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
