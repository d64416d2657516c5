"""The benchmark at the paper's scale: every method on emulated clusters, back to back.

Emulated clusters (``benchmarks/star.py``: one network namespace per host on a switch, each
host's link shaped with ``tc tbf``) of ``--clusters`` (default 2 hosts x 2 ranks and 4 hosts x
1 rank) at ``--links`` (default 1 Gbit/s and 100 Mbit/s). In each, with the same model, data,
seed and ranks, one run per method (``benchmarks/suite_job.py`` under ``mpirun``; every run
but ``dist_sync``'s in one job, one after the other, so that Python, MXNet, Horovod and the PS
tier start once: each run still builds its own model, trainer and PS keys):

* ``horovod``: Horovod allreduce over all ranks every step;
* ``dist_sync``: a stock Gluon ``Trainer(kvstore='dist_sync')``, every rank a worker, with
  MXNet's *stock* servers (``import mxnet`` with ``DMLC_ROLE=server``), one on every host;
* ``gradient_push``, ``model_average``, ``easgd``, ``diloco``: hvd_ps, one group per host,
  hvd_ps's servers one on every host (the same placement as dist_sync); the last three at
  ``--period`` with ``overlap=0`` and, when hvd_ps supports it, with ``overlap=--overlap``;
* ``bound``: the same job with the groups never exchanging (Horovod allreduce inside a host
  only): the no-communication bound, the limit of any method on that hardware.

Throughput: ``--warmup`` untimed steps, then a timed window of ``--steps`` steps, or
``--slow-steps`` for the methods that cross the link every step (each of their steps is alike;
reported per step). An overlapped run warms up ``period - 1`` steps instead, so that its window
(one period by default) starts with an exchange and ends with that exchange applied: nothing is
in flight when the job ends. Every rank builds the initial parameters from one seed (checked
equal on every rank), so no job broadcasts them across the links. ``--eval``
also evaluates the global model after each window, timed apart. Per run: samples/s,
efficiency (bound time / method time), bytes that crossed the links (the hosts' interface
counters over the window), and the split of a step into compute / group allreduce / PS wait
(``trainer.stats()``). ``--repeats N`` runs every method's throughput job N times, interleaved
(all methods, then all again), and reports the median run with the spread of step time and
of efficiency (each repeat's bound against the same repeat's method). Unless
``--no-accuracy``, time to ``--target`` test accuracy on the ``--acc-clusters`` at
``--acc-link`` with a smaller (``--acc-hidden``, >= 4M parameters) model for
``--acc-methods`` (the global model evaluated after every epoch, timed apart from training;
every run trains all ``--epochs``, so that the final accuracy of an overlapped run compares
with its blocking twin's): these runs follow the throughput runs in the same shared job
(of the last repeat). ``--no-throughput`` runs only these. Every job runs with
``OMP_NUM_THREADS=1`` and ``OMPI_MCA_mpi_yield_when_idle=1`` (more ranks than cores).
``--wire float16|int8|int4`` sends hvd_ps's exchanges in that format and, for fair peers,
compresses Horovod's allreduce to float16 (``hvd.Compression.fp16``, its best) and, with
``int8`` or ``int4``, dist_sync's gradients with MXNet's own 2-bit compression
(``kv.set_gradient_compression({'type': '2bit', 'threshold': --twobit-threshold})``, through
Gluon's ``Trainer(compression_params=...)``; it compresses the pushes only, the pulls stay
float32). With ``float16`` dist_sync sends float32 (the stock KVStore has no float16 wire).
``--ps-mode async`` (with ``--max-staleness``) runs hvd_ps's GradientPush, EASGD and DiLoCo
async (ModelAverage has only sync). ``--quorum q`` (with ``--grace``; sync, ``--wire int8``
or ``int4``) closes hvd_ps's rounds with ``q`` groups. ``--slow-group H --slowdown F`` makes
host ``H`` an emulated straggler in every run (examples/straggler.py: its forward and backward
take ``F`` times as long); a run's step time is then still its slowest rank's, and its samples/s
the sum of every rank's own (an async run's fast hosts take more steps).

Needs root. Writes ``--out``.json, .md and plots (``_efficiency.png``, ``_model.png``,
``_accuracy.png``) under benchmarks/results. Full run::

    python -m benchmarks.cluster_suite

Smoke run (a small model, one link, one cluster, a few steps)::

    python -m benchmarks.cluster_suite --clusters 2x2 --links 1gbit --hidden 256,256 \\
        --steps 4 --slow-steps 2 --period 2 --overlap 1 --no-accuracy --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks import model, report
from benchmarks.star import StarCluster
from hvd_ps.launch import tunnel_endpoint

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ALL = ("horovod", "dist_sync", "gradient_push", "model_average", "easgd", "diloco", "bound")


def overlap_supported() -> bool:
    """Whether this hvd_ps takes ``overlap=`` (the suite runs the overlapped twins only then)."""
    import hvd_ps

    try:
        hvd_ps.EASGD(period=16, overlap=8)
    except TypeError:
        return False
    return True


def warmup_steps(args: argparse.Namespace, spec: Dict) -> int:
    """Untimed steps before the window: ``--warmup``, or for an overlapped run up to the step
    before its first exchange (exchanges start at the steps ``t % period == 0``, ``t`` from 1)."""
    if not spec["overlap"]:
        return args.warmup
    period = spec["period"]
    return -(-(args.warmup + 1) // period) * period - 1


def plan(args: argparse.Namespace, overlap_ok: bool) -> List[Dict]:
    """The throughput runs of one cluster and link, in order: name, method, period, overlap,
    steps."""
    runs = []
    for m in args.methods:
        if m in model.PERIODIC:
            taus = [0] + ([args.overlap] if overlap_ok and args.overlap else [])
            for tau in taus:
                name = f"{m} k={args.period}" + (f" overlap={tau}" if tau else "")
                runs.append(dict(name=name, method=m, period=args.period, overlap=tau,
                                 steps=args.steps, mode="throughput"))  # fmt: skip
        else:
            steps = args.slow_steps if m in model.EVERY_STEP else args.steps
            runs.append(dict(name=m, method=m, period=1, overlap=0, steps=steps,
                             mode="throughput"))  # fmt: skip
    return runs


class Tunnels:
    """``--tunnels``: every ps-lite node binds 127.0.0.1 and one tunnel endpoint per host
    (hvd_ps/launch/tunnel_endpoint.py, as hvdps-run starts them) carries ps-lite's traffic
    between hosts in TLS: the scheduler on host 0 at ``port``, host ``h``'s server at
    ``port + 1 + h``, its leaders at the next ``rpn`` ports (``first + local rank``)."""

    def __init__(self, cluster: StarCluster, port: int, rpn: int, log: Path) -> None:
        n = len(cluster.hosts)
        self.server_ports = [port + 1 + h for h in range(n)]
        self.leaders = [port + 1 + n + h * rpn for h in range(n)]
        hosts = [
            tunnel_endpoint.Host(c["addr"], tuple(([port] if h == 0 else [])
                                                  + [self.server_ports[h]]
                                                  + list(range(self.leaders[h],
                                                               self.leaders[h] + rpn))))
            for h, c in enumerate(cluster.hosts)
        ]  # fmt: skip
        key = tunnel_endpoint.psk(os.urandom(32))
        self.ranks_env = ",".join(f"{c['addr']}:{f}-{f + rpn - 1}"
                                  for c, f in zip(cluster.hosts, self.leaders))  # fmt: skip
        self.procs: List[subprocess.Popen] = []
        self.logs = []
        for h, c in enumerate(cluster.hosts):
            argv = [sys.executable, "-m", "hvd_ps.launch.tunnel_endpoint", "--me", c["addr"]]
            for host in hosts:
                argv += ["--host", host.spec()]
            f = open(log.with_suffix(f".tunnel{h}.log"), "w")
            self.logs.append(f)
            proc = subprocess.Popen(cluster.on(h, argv, {"PYTHONPATH": str(ROOT)}),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f,
                                    start_new_session=True)  # fmt: skip
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write((key + "\n").encode())
            proc.stdin.flush()
            self.procs.append(proc)
        for h, proc in enumerate(self.procs):
            line = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
            if line != tunnel_endpoint.READY:
                self.stop()
                raise RuntimeError(f"the tunnel on host {h} did not start (log: {log})")

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()  # its end of input: the endpoint stops
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for f in self.logs:
            f.close()


class Tier:
    """A scheduler on host 0 and one server on every host, started for one job (with
    ``tunnels``: bound to loopback, at the tunnels' ports)."""

    def __init__(self, cluster: StarCluster, stock: bool, workers: int, port: int, log: Path,
                 tunnels: Optional[Tunnels] = None):  # fmt: skip
        self.procs: List[subprocess.Popen] = []
        self.env = {
            "DMLC_PS_ROOT_URI": cluster.hosts[0]["addr"] if tunnels is None else "127.0.0.1",
            "DMLC_PS_ROOT_PORT": str(port),
            "DMLC_NUM_SERVER": str(len(cluster.hosts)),
            "DMLC_NUM_WORKER": str(workers),
        }
        # MXNet's stock server runs at `import mxnet` under DMLC_ROLE=server; hvd_ps's is a module
        argv = [sys.executable, "-c", "import mxnet"] if stock else [sys.executable, "-m",
                                                                   "hvd_ps.server"]  # fmt: skip
        roles = [(0, "scheduler")] + [(h, "server") for h in range(len(cluster.hosts))]
        self.logs = []
        for h, role in roles:
            f = open(log.with_suffix(f".{role}{h}.log"), "w")
            self.logs.append(f)
            env = {**self.env, "DMLC_ROLE": role, "OMP_NUM_THREADS": "1"}
            if tunnels is not None:
                env["DMLC_NODE_HOST"] = "127.0.0.1"
                if role == "server":
                    env["PORT"] = str(tunnels.server_ports[h])
            self.procs.append(subprocess.Popen(cluster.on(h, argv, env), stdout=f,
                                               stderr=subprocess.STDOUT, start_new_session=True,
                                               stdin=subprocess.DEVNULL))  # fmt: skip

    def stop(self) -> None:
        deadline = time.time() + 10  # servers leave by themselves when the workers are done
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for f in self.logs:
            f.close()


def accuracy_plan(args: argparse.Namespace, overlap_ok: bool) -> List[Dict]:
    """The accuracy runs of one cluster: ``--acc-methods`` (with their overlapped twins) for
    every seed, seed by seed. The bound has no global model (each host its own): none."""
    acc = [s for s in plan(args, overlap_ok) if s["method"] in args.acc_methods]
    return [dict(s, seed=args.seed + i, mode="accuracy") for i in range(args.acc_seeds)
            for s in acc if s["method"] != "bound"]  # fmt: skip


def jobs_of(specs: List[Dict]) -> List[List[Dict]]:
    """The runs grouped into jobs, in order: every ``dist_sync`` run a job of its own (every
    rank a worker of the stock servers), every other run, throughput and accuracy alike, in
    one shared job (Python, MXNet, Horovod and the PS tier start once: ~15 s a job on two
    shared cores)."""
    stock = [[s] for s in specs if s["method"] == "dist_sync"]
    shared = [s for s in specs if s["method"] != "dist_sync"]
    return stock + ([shared] if shared else [])


def job_spec(spec: Dict, args: argparse.Namespace) -> Dict:
    """One run's settings for ``benchmarks/suite_job.py`` (its ``RUN_DEFAULTS`` keys)."""
    run = {k: spec[k] for k in ("name", "method", "period", "overlap")}
    mode = spec["mode"]
    run.update(mode=mode, batch=args.batch, seed=spec.get("seed", args.seed))
    run["fp16_allreduce"] = spec["method"] == "horovod" and args.wire != "float32"
    run.update(ps_mode=args.ps_mode, max_staleness=args.max_staleness,
               slow_group=args.slow_group, slowdown=args.slowdown,
               quorum=args.quorum, grace=args.grace)  # fmt: skip
    if spec["method"] == "dist_sync" and args.wire in ("int8", "int4"):
        run["twobit_threshold"] = args.twobit_threshold
    if mode == "throughput":
        run.update(hidden=args.hidden, warmup=warmup_steps(args, spec), steps=spec["steps"],
                   eval=args.eval)  # fmt: skip
    else:
        run.update(hidden=args.acc_hidden, epochs=args.epochs, target=args.target)
    return run


def run_job(cluster: StarCluster, specs: List[Dict], args: argparse.Namespace, rpn: int,
            link: str, port: int, tmp: Path, tunnels: bool = False) -> List[Dict]:  # fmt: skip
    """One job running ``specs`` in turn; returns, per run, the measurements of every rank
    and the run's wall time. ``tunnels``: ps-lite's traffic between hosts through the TLS
    tunnels hvdps-run sets up (:class:`Tunnels`)."""
    methods = {s["method"] for s in specs}
    seeds = sorted({s.get("seed", args.seed) for s in specs})
    modes = "+".join(sorted({s["mode"] for s in specs}))
    stem = tmp / (f"{'+'.join(sorted(methods))}_{modes}_{len(cluster.hosts)}x{rpn}_{link}"
                  f"_seed{'-'.join(map(str, seeds))}_{port}"
                  f"{'_tunnels' if tunnels else ''}")  # fmt: skip
    runs_file = stem.with_suffix(".runs.json")
    runs_file.write_text(json.dumps([job_spec(s, args) for s in specs], indent=1))
    hosts = len(cluster.hosts)
    argv = [sys.executable, "-m", "benchmarks.suite_job", "--runs", str(runs_file),
            "--ranks-per-host", str(rpn), "--out", str(stem)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1",
               OMPI_MCA_mpi_yield_when_idle="1", HVD_PS_TIMEOUT=str(args.ps_timeout),
               HVD_PS_WIRE_DTYPE=args.wire, PYTHONPATH=str(ROOT))  # fmt: skip
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    forward = ["OMPI_MCA_mpi_yield_when_idle", "HVD_PS_TIMEOUT", "HVD_PS_WIRE_DTYPE",
               "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]  # fmt: skip
    tier: Optional[Tier] = None
    links: Optional[Tunnels] = None
    stock = methods == {"dist_sync"}
    if stock or methods & set(model.PERIODIC + ("gradient_push",)):
        workers = hosts * rpn if stock else hosts
        if tunnels:
            links = Tunnels(cluster, port, rpn, stem)
            env["HVD_PS_TUNNELS"] = links.ranks_env
            forward.append("HVD_PS_TUNNELS")
            # each rank binds 127.0.0.1 at its host's leader port (what hvdps-run's ranks do)
            argv = [sys.executable, "-m", "hvd_ps.launch", "--exec-rank", "--", *argv]
        tier = Tier(cluster, stock, workers, port, stem, links)
        env.update(tier.env)
        forward += sorted(tier.env)
        if stock:
            env["DMLC_ROLE"] = "worker"
            forward.append("DMLC_ROLE")
    cmd = ["timeout", "-k", "10", str(args.job_timeout * len(specs))]
    cmd += cluster.mpirun(argv, slots=rpn, env=forward)
    names = ", ".join(f"{s['name']} ({s['mode']})" for s in specs)
    try:
        with open(stem.with_suffix(".job.log"), "w") as log:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    finally:
        if tier is not None:
            tier.stop()
        if links is not None:
            links.stop()
    ranks = []
    for r in range(hosts * rpn):
        path = Path(f"{stem}.rank{r}.json")
        if path.exists():
            ranks.append(json.loads(path.read_text()))
    if proc.returncode != 0 or len(ranks) != hosts * rpn:
        kept = Path(f"{args.out}.failed.log")  # the temporary directory goes with the run
        text = stem.with_suffix(".job.log").read_text()
        kept.write_text(text)
        raise RuntimeError(
            f"the job of {names} failed with code {proc.returncode} (log: {kept}):\n" + text[-3000:]
        )
    got = []
    for i, spec in enumerate(specs):
        per_rank = [dict(r["runs"][i], rank=r["rank"]) for r in ranks]
        if len({r["init_digest"] for r in per_rank}) != 1:
            raise RuntimeError(
                f"{spec['name']} ({spec['mode']}): the ranks' initial parameters differ although "
                "they come from one seed"
            )
        wall = max(r["run_ended"] for r in per_rank) - min(r["run_started"] for r in per_rank)
        got.append({"ranks": per_rank, "wall_s": wall})
    return got


def estimate(args: argparse.Namespace, clusters: List, links: List[str], overlap_ok: bool,
             compute_s: float, start_s: float) -> float:  # fmt: skip
    """Seconds the throughput runs should take by the cost model, given the bound's step time
    ``compute_s`` and ``start_s`` per job (start, warm-up aside, evaluation); printed per run."""
    params = report.param_count(args.hidden)
    total = 0.0
    for hosts, rpn in clusters:
        for link in links:
            net = model.Net(hosts, rpn, model.rate_bytes(link))
            job = model.Job(params, compute_s, wire_bytes=report.WIRE_BYTES[args.wire])
            for spec in plan(args, overlap_ok):
                m = spec["method"]
                st = model.step(m, net, job, spec["period"], spec["overlap"], hosts)["step_s"]
                n = spec["steps"] + warmup_steps(args, spec)
                evals = params * 4 / net.bandwidth if m != "bound" and args.eval else 0.0
                secs = start_s + n * st + evals
                total += secs
                print(f"{hosts}x{rpn} {link} {spec['name']}: {n} steps x {st:.2f} s + "
                      f"{start_s:.0f} s start + {evals:.1f} s eval = {secs:.0f} s")  # fmt: skip
    print(f"throughput runs: {total / 60:.1f} min by the model ({params / 1e6:.1f}M parameters)")
    return total


def parser() -> argparse.ArgumentParser:
    """The suite's flags (benchmarks/bench_tunnels.py reads them too)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="2x2,4x1", help="HOSTSxRANKS, comma separated")
    ap.add_argument("--links", default="1gbit,100mbit", help="tc rates, comma separated")
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--hidden", default="4096,4096,2048", help="MLP widths (25.5M parameters)")
    ap.add_argument("--acc-hidden", default="2048,2048", help="accuracy model (4.3M parameters)")
    ap.add_argument("--period", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=None,
                    help="tau of the overlapped twins (0: none; default: period - 1)")  # fmt: skip
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed steps (an overlapped run: up to its first exchange)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=16, help="timed steps (one period by default)")
    ap.add_argument("--slow-steps", type=int, default=2,
                    help="timed steps of the methods that cross the link every step")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=1,
                    help="throughput runs of each method, interleaved; the table shows the median "
                    "and the spread (accuracy runs are not repeated)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wire", choices=("float32", "float16", "int8", "int4"),
                    default="float32",
                    help="HVD_PS_WIRE_DTYPE of every hvd_ps run; any but float32 also "
                    "compresses Horovod's allreduce to float16 (hvd.Compression.fp16), and "
                    "int8/int4 dist_sync's pushes with MXNet's 2-bit compression")  # fmt: skip
    ap.add_argument("--twobit-threshold", type=float, default=0.5,
                    help="dist_sync's 2-bit compression threshold with --wire int8|int4 "
                    "(MXNet's documentation uses 0.5)")  # fmt: skip
    ap.add_argument("--ps-mode", choices=("sync", "async"), default="sync",
                    help="hvd_ps's mode (ModelAverage has only sync)")  # fmt: skip
    ap.add_argument("--max-staleness", type=int, default=None,
                    help="with --ps-mode async: the bound of every hvd_ps run")  # fmt: skip
    ap.add_argument("--quorum", type=int, default=None,
                    help="sync hvd_ps runs on --wire int8|int4: the groups a round needs "
                    "(default: all)")  # fmt: skip
    ap.add_argument("--grace", type=float, default=None,
                    help="with --quorum: seconds a round waits for the rest "
                    "(default: adaptive)")  # fmt: skip
    ap.add_argument("--slow-group", type=int, default=None,
                    help="an emulated straggler: this host's ranks compute --slowdown times as "
                    "slowly, in every run (examples/straggler.py)")  # fmt: skip
    ap.add_argument("--slowdown", type=float, default=2.0,
                    help="with --slow-group: how many times as slowly (default 2)")  # fmt: skip
    ap.add_argument("--tunnels", action="store_true",
                    help="ps-lite's traffic between hosts through the TLS tunnels hvdps-run "
                    "sets up (every node on loopback), dist_sync's stock tier's too")  # fmt: skip
    ap.add_argument("--eval", action="store_true",
                    help="also evaluate the global model after each throughput window")  # fmt: skip
    ap.add_argument("--no-accuracy", action="store_true", help="skip time-to-accuracy")
    ap.add_argument("--no-throughput", action="store_true",
                    help="only the time-to-accuracy runs")  # fmt: skip
    ap.add_argument(
        "--acc-methods",
        default="horovod,model_average,easgd,diloco",
        help="methods of the time-to-accuracy runs (with their overlapped twins)",
    )
    ap.add_argument("--acc-clusters", default="2x2,4x1",
                    help="clusters of the time-to-accuracy runs (of --clusters)")  # fmt: skip
    ap.add_argument("--acc-link", default="1gbit", help="link of the time-to-accuracy runs")
    ap.add_argument("--acc-seeds", type=int, default=1,
                    help="accuracy runs of every method with seeds --seed .. --seed + N - 1 "
                    "(data split, shards, initial model); the table shows the mean and the "
                    "spread, and each overlapped run against its blocking twin of the same "
                    "seed")  # fmt: skip
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument(
        "--epochs",
        type=int,
        default=12,
        help="epochs of an accuracy run (all of them: final accuracies compare)",
    )
    ap.add_argument("--job-timeout", type=int, default=900,
                    help="seconds per run (a job of N runs: N times this)")  # fmt: skip
    ap.add_argument("--ps-timeout", type=int, default=600)
    ap.add_argument("--out", default=str(RESULTS / "cluster_suite"))
    ap.add_argument("--estimate", nargs=2, type=float, metavar=("COMPUTE_S", "START_S"),
                    help="print the model's duration of the throughput runs for a bound step "
                    "of COMPUTE_S and START_S per job, and exit (needs no root)")  # fmt: skip
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.acc_methods = [m for m in args.acc_methods.split(",") if m]
    bad = [m for m in args.methods + args.acc_methods if m not in ALL]
    if bad:
        ap.error(f"--methods: unknown {', '.join(bad)} (choose from {', '.join(ALL)})")
    clusters = [tuple(int(v) for v in c.split("x")) for c in args.clusters.split(",")]
    acc_clusters = [tuple(int(v) for v in c.split("x")) for c in args.acc_clusters.split(",") if c]
    if args.overlap is None:
        args.overlap = args.period - 1
    if args.repeats < 1:
        ap.error(f"--repeats: need at least 1, got {args.repeats}")
    if args.acc_seeds < 1:
        ap.error(f"--acc-seeds: need at least 1, got {args.acc_seeds}")
    if not 0 <= args.overlap < args.period:
        ap.error(f"--overlap: need 0 <= overlap < period ({args.period}), got {args.overlap}")
    links = args.links.split(",")
    overlap_ok = overlap_supported()
    if args.estimate:
        estimate(args, clusters, links, overlap_ok, *args.estimate)
        return 0
    if os.geteuid() != 0:
        ap.error("needs root: it creates network namespaces")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the namespaces too
    results: Dict = {"args": vars(args), "overlap_supported": overlap_ok, "runs": [],
                     "accuracy": [], "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                              time.gmtime())}  # fmt: skip
    start, port = time.time(), 9300
    with tempfile.TemporaryDirectory(prefix="hvdps-suite-") as tmpdir:
        tmp = Path(tmpdir)
        for hosts, rpn in clusters:
            for link in links:
                with StarCluster(hosts=hosts, rate=link) as cluster:
                    # repeats interleaved: every method once, then again, so that a drift of
                    # the machine's speed touches every method alike; the accuracy runs join
                    # the last repeat's jobs (one job start fewer)
                    throughput = [] if args.no_throughput else plan(args, overlap_ok)
                    acc = [] if args.no_accuracy or (hosts, rpn) not in acc_clusters \
                        or link != args.acc_link else accuracy_plan(args, overlap_ok)  # fmt: skip
                    for repeat in range(args.repeats):
                        specs = throughput + (acc if repeat == args.repeats - 1 else [])
                        rows: Dict[str, Dict] = {}
                        for job in jobs_of(specs):
                            port += 64 if args.tunnels else 1  # (a tunneled job: 64 ports)
                            print(report.progress_job(job, hosts, rpn, link,
                                                      time.time() - start), flush=True)  # fmt: skip
                            done = run_job(cluster, job, args, rpn, link, port, tmp,
                                           args.tunnels)  # fmt: skip
                            for spec, got in zip(job, done):
                                if spec["mode"] == "accuracy":
                                    row = report.accuracy_row(spec, got, hosts, rpn, link)
                                    results["accuracy"].append(row)
                                    print(report.progress_acc(row, time.time() - start),
                                          flush=True)  # fmt: skip
                                    continue
                                row = report.throughput_row(spec, got, hosts, rpn, link, args)
                                row["repeat"] = repeat
                                rows[spec["name"]] = row
                                print(report.progress(row, time.time() - start), flush=True)
                        results["runs"] += [rows[s["name"]] for s in throughput]  # plan order
    report.finish(results, Path(args.out), time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
