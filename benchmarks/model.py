"""A cost model of one training step on a cluster of hosts joined by links of one rate.

Every host has one network interface of ``bandwidth`` bytes/s in each direction (full duplex,
as each end of the emulated links is shaped with ``tc tbf``) into a switch that is never the
bottleneck; ranks on one host talk through shared memory, which the model takes as free. A
step costs the measured work that does not cross a link plus what the method sends:

* ``bound`` (Horovod inside each host only) is measured, and its step (forward, backward, the
  group's shared-memory allreduce, the local update) is the base of ``horovod`` and of hvd_ps's
  methods, which do all of that too.
* ``horovod``: Open MPI's allreduce of the ``M``-byte gradient over all ``N`` ranks, placed
  host by host. Its large-message algorithm (recursive halving, then doubling, nearest
  partners first) keeps the steps between ranks of one host inside it, so each host's
  interface carries ``2 (H-1)/H M`` bytes each way for ``H`` hosts, as a ring over the hosts
  would (counted: 102 MB per host per step on 2 x 2 and 153 MB on 4 x 1 for 102 MB of
  gradient), ``2 log2 N`` latencies, every step. In its steps across hosts every rank of a
  host talks to its partner at once: ``R`` ranks per host are ``R`` flows on the interface.
* ``dist_sync``: MXNet's dist KVStore with every rank a worker and servers on ``server_hosts``
  hosts (keys sharded evenly): every step every worker pushes ``M`` and pulls ``M``. It has no
  Horovod group and its servers run the optimizer, so its base is the bound's forward and
  backward alone (``Job.fwd_bwd_s``), not the bound's step. Its KVStore has one key per
  parameter array and pipelines them: the pull of one key runs while others are still being
  pushed, so each interface carries its push and pull bytes back to back and the exchange
  lasts as long as the busiest direction of the busiest interface needs (push + pull), not a
  push phase then a pull phase.
* ``gradient_push``: hvd_ps with one group per host; the leaders push the group's gradient and
  pull the weights every step (``W`` bytes each way, as below).
* ``model_average`` / ``easgd`` / ``diloco``: the leaders push and pull the ``W``-byte model
  (``W`` = parameters x wire bytes) every ``period`` steps. With ``overlap=tau`` the exchange
  runs behind ``tau`` steps of compute and only what is left of it is waited for.

An hvd_ps exchange is a push phase then a pull phase; a phase lasts as long as its busiest
interface needs (:func:`ps_phase`) plus one latency. Bytes on the wire are payload times
:data:`FRAME_OVERHEAD`, the headers interface counters and ``tc tbf`` count on top of it.

No transport drives a link at its rate. Each of the three transports (:data:`TRANSPORTS`:
Open MPI for Horovod, MXNet's stock KVStore for dist_sync, hvd_ps's servers) has a
:class:`Transport`: the fraction of the link rate one of its flows reaches *at each measured
rate* (``by_rate``; between rates interpolated in log rate, outside them the nearest). The
fraction is the transport's, not the link's (a plain TCP stream between two emulated hosts
reaches 0.96 of the shaped rate), and it need not be the same at every rate: the stock KVStore
keeps many flows into one server at once, and the ``tc tbf`` queue (50 ms of the rate) holds
ten times fewer bytes at 100 Mbit/s than at 1 Gbit/s. Several flows of Open MPI on one
interface (``R`` > 1 ranks per host) leave it idle only when all of them are:
``1 - (1 - e)^R``.

Moving the model costs processor time too. A periodic hvd_ps strategy reads the whole model
out, sends it, and its servers and leaders then run the strategy's arithmetic over every
parameter: ``exchange_s_per_param`` processor seconds per parameter and exchange, on every
leader (gradient_push has no such pass: its servers' update replaces the local one already in
the bound). An overlapped exchange hides its time on the link behind compute, not this: on
the emulated cluster every host shares this machine's two cores, so it is taken from the
compute it runs beside, and the work of all hosts adds up (on a cluster of real hosts each
pays for its own, ``Net.shared_cpu``). Processor time depends on how fast the machine is at
the time, which on this shared machine changed by ~2.7x between days (the bound's forward and
backward: 0.074 s a step in the calibration file, 0.16-0.31 s in the others), so it is scaled
by ``Net.cpu_scale``: the bound's forward+backward time of the same file over that of the
calibration file (:data:`REFERENCE_FWD_BWD_S`). Only measured inputs of the *bound* enter, so
nothing of the run being predicted feeds its own prediction.

The constants are fitted (:func:`calibrate`, least squares on relative error, blocking and
overlapped runs) to one results file, ``results/cluster_suite_4x1_run1.json`` (4 hosts x 1 rank at
1 Gbit/s and 100 Mbit/s, every method); :func:`check` reports the model against the runs of
any other file, which the fit has not seen (:data:`CALIBRATION_NOTE`). What it leaves: the
runs repeat only within ~+-15% on this machine (2 x 2 Horovod at 100 Mbit/s took 11.5, 12.5
and 15.4 s a step in three files), and EASGD's push of ``d`` is not waited for, so part of it
can fall after the timed window (its measured bytes are then below the model's).

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

#: the bound's forward+backward seconds per step in the calibration file (4x1, mean of its two
#: links): the processor speed the fitted processor costs belong to
REFERENCE_FWD_BWD_S = 0.0732
CALIBRATION_FILE = "results/cluster_suite_4x1_run1.json"
#: the caption of the model's table: where its constants and inputs come from
CALIBRATION_NOTE = (
    f"Transport constants fitted to `{CALIBRATION_FILE}` (blocking and overlapped runs), not "
    "to these runs. Inputs from the bound of the same cluster and link only: its step is the "
    "base of Horovod and hvd_ps, its forward+backward the base of dist_sync (no Horovod group, "
    "optimizer on the servers), and its forward+backward over the calibration file's "
    f"({REFERENCE_FWD_BWD_S:.3f} s) scales the processor time (this machine's speed varies "
    "between days). The step of the run itself is never an input."
)


@dataclass(frozen=True)
class Transport:
    """How one transport uses a link. One of its flows reaches ``efficiency`` of the link
    rate, or, if ``by_rate`` lists ``(rate in bytes/s, efficiency)`` pairs, the efficiency at
    that rate (interpolated in log rate between the pairs, the nearest pair outside them).
    ``cpu_s_per_byte``: processor seconds per byte it sends; ``exchange_s_per_param``:
    processor seconds per parameter and exchange of a periodic strategy, per leader (both on
    the calibration machine, scaled by ``Net.cpu_scale``)."""

    efficiency: float
    cpu_s_per_byte: float = 0.0
    by_rate: Tuple[Tuple[float, float], ...] = ()
    exchange_s_per_param: float = 0.0

    def efficiency_at(self, rate: float) -> float:
        if not self.by_rate:
            return self.efficiency
        pts = sorted(self.by_rate)
        if rate <= pts[0][0]:
            return pts[0][1]
        for (r0, e0), (r1, e1) in zip(pts, pts[1:]):
            if rate <= r1:
                w = math.log(rate / r0) / math.log(r1 / r0)
                return e0 + w * (e1 - e0)
        return pts[-1][1]


#: fitted by ``python -m benchmarks.model --calibrate results/cluster_suite_4x1_run1.json``
TRANSPORTS: Dict[str, Transport] = {
    "mpi": Transport(0.565, by_rate=((1.25e7, 0.565), (1.25e8, 0.565))),
    "stock_ps": Transport(0.847, by_rate=((1.25e7, 0.526), (1.25e8, 0.847))),
    "hvd_ps": Transport(
        0.649, by_rate=((1.25e7, 0.755), (1.25e8, 0.649)), exchange_s_per_param=9.83e-9
    ),
}
TRANSPORT_OF = {"horovod": "mpi", "dist_sync": "stock_ps", "gradient_push": "hvd_ps",
                "model_average": "hvd_ps", "easgd": "hvd_ps", "diloco": "hvd_ps"}  # fmt: skip


@dataclass(frozen=True)
class Net:
    """``hosts`` hosts of ``ranks_per_host`` ranks; links of ``bandwidth`` bytes/s per
    direction and ``latency`` seconds per message; ``shared_cpu``: the hosts share one
    machine's cores (the emulated cluster), so their processor time adds up; ``cpu_scale``:
    how much slower the processors are than in the calibration file (1: as fast)."""

    hosts: int
    ranks_per_host: int
    bandwidth: float
    latency: float = 0.0
    shared_cpu: bool = True
    cpu_scale: float = 1.0

    @property
    def ranks(self) -> int:
        return self.hosts * self.ranks_per_host


@dataclass(frozen=True)
class Job:
    """``params`` values of ``value_bytes`` each (``wire_bytes`` each on hvd_ps's and
    Horovod's wire, which can be float16; the stock KVStore sends ``value_bytes``);
    ``compute_s`` the step time of the no-communication bound, ``fwd_bwd_s`` its forward and
    backward alone (dist_sync's base; ``compute_s`` if not given)."""

    params: int
    compute_s: float
    value_bytes: int = 4
    wire_bytes: float = 4.0
    fwd_bwd_s: Optional[float] = None


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
             transport: Transport, pipelined: bool = False) -> Dict:  # fmt: skip
    """A push and a pull: bytes each host sends, seconds on the link (``link_s``), processor
    seconds for the bytes (``cpu_s``) and their sum (``seconds``). Blocking phases
    (``pipelined=False``, hvd_ps): the push, then the pull, each as long as its busiest
    interface. Pipelined keys (the stock KVStore): push and pull share the link, so the
    exchange is as long as the busiest direction needs for both, plus the first push's and the
    last pull's latency."""
    up, down = ps_phase(net.hosts, clients_per_host, nbytes * FRAME_OVERHEAD, server_hosts)
    rate = transport.efficiency_at(net.bandwidth) * net.bandwidth
    # the pull sends back what the push received: host h uploads down[h], downloads up[h]
    sent = [u + d for u, d in zip(up, down)]
    if not max(sent):
        link = 0.0
    elif pipelined:  # each direction of host h carries up[h] + down[h] in all
        link = max(sent) / rate + 2 * net.latency
    else:
        link = 2 * (max(max(up), max(down)) / rate + net.latency)
    cpu = transport.cpu_s_per_byte * net.cpu_scale * (sum(sent) if net.shared_cpu else max(sent))
    return {"link_s": link, "cpu_s": cpu, "seconds": link + cpu, "sent": sent}


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
    ``comm_s`` (what the step costs beyond its base, per step: communication that is not
    hidden and the processor time of moving the model), ``sent`` (bytes each host sends per
    step, averaged over a period) and ``total_bytes`` (their sum: what crossed the links).
    ``transports`` defaults to :data:`TRANSPORTS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if period < 1 or not 0 <= overlap < period:
        raise ValueError(f"need period >= 1 and 0 <= overlap < period, got {period}, {overlap}")
    tr = (transports or TRANSPORTS)[TRANSPORT_OF.get(method, "mpi")]
    grad = job.params * job.value_bytes
    base = job.compute_s
    if method == "dist_sync" and job.fwd_bwd_s is not None:
        base = job.fwd_bwd_s  # no group allreduce, no local update: the servers update
    if method == "bound" or net.hosts == 1:
        comm, sent = 0.0, [0.0] * net.hosts
    elif method == "horovod":  # its wire: float16 with hvd.Compression.fp16
        edge = 2 * (net.hosts - 1) / net.hosts * job.params * job.wire_bytes * FRAME_OVERHEAD
        # ranks_per_host flows on an interface: it idles only when every one of them does
        busy = 1 - (1 - tr.efficiency_at(net.bandwidth)) ** net.ranks_per_host
        link = edge / (busy * net.bandwidth) + 2 * math.log2(net.ranks) * net.latency
        cpu = tr.cpu_s_per_byte * net.cpu_scale * edge * (net.hosts if net.shared_cpu else 1)
        comm, sent = link + cpu, [edge] * net.hosts
    elif method == "dist_sync":
        x = exchange(net, net.ranks_per_host, grad, server_hosts, tr, pipelined=True)
        comm, sent = x["seconds"], x["sent"]
    elif method == "gradient_push":  # hvd_ps's wire dtype applies to the gradient too
        x = exchange(net, 1, job.params * job.wire_bytes, server_hosts, tr)
        comm, sent = x["seconds"], x["sent"]
    else:  # overlap hides the link time behind compute, not the processor time
        x = exchange(net, 1, job.params * job.wire_bytes, server_hosts, tr)
        leaders = net.hosts if net.shared_cpu else 1
        work = tr.exchange_s_per_param * net.cpu_scale * job.params * leaders
        comm = (work + x["cpu_s"] + max(0.0, x["link_s"] - overlap * job.compute_s)) / period
        sent = [b / period for b in x["sent"]]
    return {
        "step_s": base + comm,
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


def _point(
    run: Dict,
    bound: Dict,
    transports: Optional[Dict[str, Transport]] = None,
    reference_fwd_bwd_s: float = REFERENCE_FWD_BWD_S,
) -> Dict:
    """The model of ``run`` from the measurements of its ``bound`` alone."""
    fwd_bwd = bound.get("compute_s")
    net = Net(
        hosts=run["hosts"],
        ranks_per_host=run["ranks_per_host"],
        bandwidth=rate_bytes(run["link"]),
        latency=run.get("latency_s", 0.0),
        cpu_scale=fwd_bwd / reference_fwd_bwd_s if fwd_bwd else 1.0,
    )
    job = Job(
        params=run["params"],
        compute_s=bound["step_s"],
        wire_bytes=run.get("wire_bytes", 4),
        fwd_bwd_s=fwd_bwd,
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


def _reference_fwd_bwd(runs: Sequence[Dict]) -> float:
    """The mean forward+backward time of the bounds in ``runs`` (of a calibration file)."""
    times = [r["compute_s"] for r in runs if r["method"] == "bound" and r.get("compute_s")]
    return sum(times) / len(times) if times else REFERENCE_FWD_BWD_S


def calibrate(runs: Sequence[Dict]) -> Dict[str, Transport]:
    """The constants of every transport, fitted by least squares on relative error to the
    runs of ``runs`` (each weighted by its step, so that the fit minimises the relative
    error of step times): a run's cost per period, ``(step - base) x period``, is its link seconds
    at the full rate over the efficiency at its rate, less what ``tau`` steps of compute hide
    of it if it is overlapped, plus, for hvd_ps's periodic strategies,
    ``exchange_s_per_param x parameters x leaders`` (never hidden). The overlapped runs are
    what tell the processor cost apart from the link's: the fit starts from the blocking runs,
    then adds each overlapped run in the regime the current constants put it in (its link
    time partly waited for, or all hidden) and fits again, until no run changes regime.

    Processor costs are for the speed of this file's machine (its bounds' mean
    forward+backward, to be set as :data:`REFERENCE_FWD_BWD_S`). Horovod's runs with R > 1
    ranks per host give their per-flow efficiency through ``1 - (1 - e)^R``. No per-byte
    processor cost is fitted: it cannot be told apart from a lower efficiency at each rate.
    A negative fitted cost is fitted as zero."""
    ref = _reference_fwd_bwd(runs)
    unit = {t: Transport(1.0) for t in ("mpi", "stock_ps", "hvd_ps")}
    cost = {"hvd_ps": Transport(math.inf, exchange_s_per_param=1.0)}
    fitted = {}
    for name in unit:
        rates: List[float] = []
        points = []  # (rate index, link s at full rate, work, hidden s, cost, step x period)
        for run in runs:
            m, bound = run["method"], _bound(run, runs)
            if bound is None or run is bound or TRANSPORT_OF.get(m) != name:
                continue
            k, rate = run.get("period", 1), rate_bytes(run["link"])
            plain = {**run, "period": 1, "overlap": 0}
            ideal = _point(plain, bound, unit, ref)
            base = ideal["step_s"] - ideal["comm_s"]
            link, y = ideal["comm_s"], (run["step_s"] - base) * k
            hidden = run.get("overlap", 0) * bound["step_s"]
            if m == "horovod" and run["ranks_per_host"] > 1 and 0 < link < y:
                # the busy fraction of R flows back to the efficiency of one
                y = link / (1 - (1 - link / y) ** (1 / run["ranks_per_host"]))
            work = _point(plain, bound, cost, ref)["comm_s"] if m in PERIODIC else 0.0
            if rate not in rates:
                rates.append(rate)
            points.append((rates.index(rate), link, work, hidden, y, run["step_s"] * k))
        if not points:
            continue
        x = _fit(points, len(rates), None)
        for _ in range(20):  # the overlapped runs' regimes, until they settle
            again = _fit(points, len(rates), x)
            if np.allclose(again, x):
                break
            x = again
        by_rate = tuple(sorted((r, float(1 / x[j])) for j, r in enumerate(rates)))
        fitted[name] = Transport(
            efficiency=by_rate[-1][1], by_rate=by_rate, exchange_s_per_param=float(x[-1])
        )
    return fitted


def _fit(points: Sequence[Tuple], n_rates: int, x: Optional[np.ndarray]) -> np.ndarray:
    """One least-squares solve of :func:`calibrate`: unknowns ``1/efficiency`` per rate, then
    the processor seconds per parameter. Without ``x`` only the blocking runs enter; with it,
    an overlapped run enters as ``link/e - hidden + work`` if ``x`` leaves part of its link
    time waited for, else as ``work``."""
    rows, ys = [], []
    for j, link, work, hidden, y, scale in points:
        row = np.zeros(n_rates + 1)
        row[-1] = work
        if hidden == 0:
            row[j] = link
        elif x is None:
            continue
        elif link * x[j] > hidden:
            row[j], y = link, y + hidden  # the hidden seconds move to the measured side
        rows.append(row / scale)  # relative error of the step: every run weighs the same
        ys.append(y / scale)
    a, b = np.array(rows), np.array(ys)
    used = [c for c in range(n_rates + 1) if a[:, c].any()]
    out = np.zeros(n_rates + 1)
    out[used] = np.linalg.lstsq(a[:, used], b, rcond=None)[0]
    if out[-1] < 0:
        used = [c for c in used if c != n_rates]
        out[:] = 0.0
        out[used] = np.linalg.lstsq(a[:, used], b, rcond=None)[0]
    return out


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
    cpu_scale: float = 1.0,
) -> Dict[str, List[float]]:
    """Predicted samples/s per method for each rank count (``batch`` samples per rank and
    step; servers on every host for dist_sync and hvd_ps), on real hosts: each host pays the
    processor time of its own work, at this machine's cost (``cpu_scale``, as in :class:`Net`)."""
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
            net = Net(hosts, ranks_per_host, bandwidth, latency, shared_cpu=False,
                      cpu_scale=cpu_scale)  # fmt: skip
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
        fwd_bwd = ref.get("compute_s")
        job = Job(params=ref["params"], compute_s=ref["step_s"],
                  wire_bytes=ref.get("wire_bytes", 4), fwd_bwd_s=fwd_bwd)  # fmt: skip
        a = results.get("args", {})
        period, tau = a.get("period", 16), a.get("overlap", 8) or 0
        tau = tau if tau < period else period - 1
        scale = fwd_bwd / REFERENCE_FWD_BWD_S if fwd_bwd else 1.0
        curves = scaling(ranks, ranks_per_host, rate_bytes(link), job, ref["batch"], period, tau,
                         cpu_scale=scale)  # fmt: skip
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
        print(f"reference forward+backward: {_reference_fwd_bwd(results['runs']):.4f} s")
        for name, t in calibrate(results["runs"]).items():
            rates = ", ".join(f"{r * 8 / 1e6:g} Mbit/s {e:.3f}" for r, e in t.by_rate)
            print(f"{name}: efficiency {rates}; exchange_s_per_param {t.exchange_s_per_param:.3g}")
        return 0
    print(check_markdown(check(results["runs"])))
    if args.plot:
        plot_scaling(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
