"""One rank of one job of ``benchmarks/cluster_suite.py`` (started by it under ``mpirun``).

A job runs one or more *runs* in turn (``--runs``, a JSON list written by the suite), all in
the same processes: Python, MXNet, Horovod and, for hvd_ps, the PS tier start once per job
instead of once per method, which on two shared cores is ~15 s a job. Each run builds its own
model from the seed (checked equal on every rank), its own trainer (fresh PS keys for hvd_ps)
and its own timed window, and frees both before the next run (MXNet's KVStore keeps the
buffers of every key it has seen, so each hvd_ps run leaves ~2 copies of its model in a
leader's memory: the suite gives a job one repeat's runs). A run trains an MLP on
scikit-learn's digits (each rank its own equal shard) with one method:

* ``mode=throughput``: ``warmup`` steps, then ``steps`` timed steps. A step is timed from
  its forward pass until its parameters are ready to read; ``fwd_bwd_s`` (until the gradients
  are ready) is its compute, the rest is what ``trainer.step`` costs (for hvd_ps split further
  by ``trainer.stats()``). The local rank 0 of each host reads its interface counters at the
  start and end of the run and of the timed window (after the engine has drained: a push the
  step did not wait for, such as EASGD's ``d``, still belongs to the window). With ``eval``
  the global model is then evaluated on the test set (timed apart, ``eval_s``).
* ``mode=accuracy``: ``epochs`` epochs; after each, every rank evaluates the global model
  (timed apart, not counted as training time). ``train_s`` is the training time until the
  first epoch at ``target`` test accuracy; every run trains all its epochs, so that the final
  accuracies of two methods compare.

Methods: ``horovod`` (allreduce over all ranks), ``bound`` (Horovod allreduce inside each host
only, groups never exchange: the no-communication bound), ``dist_sync`` (a stock Gluon
``Trainer(kvstore='dist_sync')``, every rank a worker, no Horovod: a job of its own, with the
stock servers), and hvd_ps's ``gradient_push``, ``model_average``, ``easgd``, ``diloco`` (one
group per host). Every rank writes ``--out``.rank<N>.json: its runs' measurements, in order.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import List

STARTED = time.time()  # the timeline of a job: where its wall time goes outside the steps

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import straggler  # noqa: E402  (examples/straggler.py)

HVD_PS_METHODS = ("gradient_push", "model_average", "easgd", "diloco")
METHODS = ("horovod", "bound", "dist_sync") + HVD_PS_METHODS


#: a run's settings and their defaults (the suite writes the ones it sets)
RUN_DEFAULTS = {
    "name": None, "method": None, "mode": "throughput", "hidden": "4096,4096,2048",
    "period": 16, "overlap": 0, "warmup": 1, "steps": 16, "epochs": 12, "target": 0.95,
    "batch": 32, "lr": 0.1, "momentum": 0.9, "seed": 0, "eval": False,
    # horovod: compress its allreduce to float16 (the peer of hvd_ps's compressed wires)
    "fp16_allreduce": False,
    # dist_sync: MXNet's 2-bit gradient compression with this threshold (None: none)
    "twobit_threshold": None,
    # hvd_ps's mode ("async": GradientPush, EASGD, DiLoCo; ModelAverage stays sync) and its
    # bound; an emulated straggler: host (group) slow_group computes slowdown times as slowly
    "ps_mode": "sync", "max_staleness": None, "slow_group": None, "slowdown": 1.0,
    # sync hvd_ps on a compressed wire: rounds closed by this many groups, with this grace
    "quorum": None, "grace": None,
}  # fmt: skip


class TwoBitTrainer:
    """dist_sync with MXNet's 2-bit gradient compression, through the KVStore API it is
    documented with (``kv.set_gradient_compression``, then ``push`` and ``pull``): Gluon's
    Trainer of MXNet 1.9 exchanges dense gradients with ``pushpull``, which refuses
    compression ("Compression not supported with PushPull"). The servers run the optimizer
    (``kv.set_optimizer``), as Gluon's Trainer does for a dist KVStore."""

    def __init__(self, params, optim: dict, kv, threshold: float, step_size: int) -> None:
        self.kv = kv
        self.params = [p for p in params.values() if p.grad_req != "null"]
        kv.set_gradient_compression({"type": "2bit", "threshold": threshold})
        kv.set_optimizer(mx.optimizer.SGD(rescale_grad=1.0 / step_size, **optim))
        self.step_size = step_size
        for i, p in enumerate(self.params):
            kv.init(i, p.data())
            kv.pull(i, out=p.data())  # every worker starts from rank 0's values

    def step(self, batch_size: int) -> None:
        if batch_size != self.step_size:
            raise ValueError(f"TwoBitTrainer was made for steps of {self.step_size} samples")
        for i, p in enumerate(self.params):
            self.kv.push(i, p.grad(), priority=-i)
            self.kv.pull(i, out=p.data(), priority=-i)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True,
                   help="JSON file: this job's runs in order, each a dict of RUN_DEFAULTS' "
                   "keys")  # fmt: skip
    p.add_argument("--ranks-per-host", type=int, required=True)
    p.add_argument("--dev", default="hvps0", help="the host's inter-host interface")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def load_runs(path: str) -> List[argparse.Namespace]:
    runs = []
    for spec in json.loads(Path(path).read_text()):
        unknown = sorted(set(spec) - set(RUN_DEFAULTS))
        if unknown or spec.get("method") not in METHODS:
            raise SystemExit(f"--runs: unknown settings {unknown} or method in {spec}")
        runs.append(argparse.Namespace(**{**RUN_DEFAULTS, **spec}))
    stock = [r.method == "dist_sync" for r in runs]
    if not runs or (any(stock) and len(runs) != 1):
        # every rank a worker of MXNet's stock servers, whose KVStore starts once per process
        # and whose keys a second Trainer would push into as gradients: one run per job
        raise SystemExit(f"--runs: need one run, or runs without dist_sync; got {len(runs)}")
    return runs


def load_data(seed: int, rank: int, size: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    order = np.random.RandomState(seed).permutation(len(x_tr))
    per = len(x_tr) // size
    mine = order[rank * per : (rank + 1) * per]
    return x_tr[mine], y_tr[mine].astype(np.float32), x_te, y_te.astype(np.int64)


def build_net(hidden: str) -> mx.gluon.HybridBlock:
    net = mx.gluon.nn.HybridSequential()
    units = 64
    with net.name_scope():
        for width in (int(w) for w in hidden.split(",") if w):
            net.add(mx.gluon.nn.Dense(width, activation="relu", in_units=units))
            units = width
        net.add(mx.gluon.nn.Dense(10, in_units=units))
    return net


def counters(dev: str) -> dict:
    base = f"/sys/class/net/{dev}/statistics"
    if not os.path.isdir(base):
        return {}
    return {k: int(open(f"{base}/{k}").read()) for k in ("tx_bytes", "rx_bytes")}


def strategy(run: argparse.Namespace, groups: int):
    import hvd_ps

    kw = {"overlap": run.overlap} if run.overlap else {}
    if run.quorum is not None and run.ps_mode == "sync":
        kw.update(quorum=run.quorum, grace=run.grace)
    if run.method == "model_average":  # sync only
        return hvd_ps.ModelAverage(period=run.period, **kw)
    mode = {"mode": run.ps_mode}
    if run.max_staleness is not None:
        mode["max_staleness"] = run.max_staleness
    if run.method == "gradient_push":
        quorum = {k: kw[k] for k in ("quorum", "grace") if k in kw}
        return hvd_ps.GradientPush(**mode, **quorum)
    if run.method == "easgd":
        return hvd_ps.EASGD(period=run.period, alpha=0.9 / groups, **kw, **mode)
    return hvd_ps.DiLoCo(period=run.period, outer_lr=0.7, momentum=0.5, **kw, **mode)


class Job:
    """What the runs of a job share: the ranks, Horovod or hvd_ps (and its PS tier), the
    hosts' process sets; and each run's trainer and evaluation."""

    def __init__(self, runs: List[argparse.Namespace], ranks_per_host: int) -> None:
        self.stock = runs[0].method == "dist_sync"
        self.hvd_ps = any(r.method in HVD_PS_METHODS for r in runs)
        if self.stock:
            self.rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
            self.size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
        else:
            import horovod.mxnet as hvd

            if self.hvd_ps:
                import hvd_ps

                hvd_ps.init(group_size=ranks_per_host)  # one group per host
                self.host_set = hvd_ps.group()
            else:
                size, r = int(os.environ["OMPI_COMM_WORLD_SIZE"]), ranks_per_host
                sets = [hvd.ProcessSet(list(range(g, g + r))) for g in range(0, size, r)]
                hvd.init(process_sets=sets)
                self.host_set = next(s for s in sets if hvd.rank() in s.ranks)
            self.rank, self.size = hvd.rank(), hvd.size()
        self.hosts = self.size // ranks_per_host
        self.ranks_per_host = ranks_per_host

    def trainer(self, run: argparse.Namespace, params, index: int):
        optim = {"learning_rate": run.lr, "momentum": run.momentum}
        if run.method == "dist_sync":
            kv = mx.kv.create("dist_sync")  # MXNet's stock KVStore; servers started by the suite
            if run.twobit_threshold is not None:
                return TwoBitTrainer(params, optim, kv, run.twobit_threshold, self.step_size(run))
            return mx.gluon.Trainer(params, "sgd", optim, kvstore=kv)
        import horovod.mxnet as hvd

        # A user's script broadcasts the initial parameters first (hvd.broadcast_parameters,
        # hvd_ps.broadcast_parameters). Here every rank builds them from one seed, and the
        # suite checks that they are equal on every rank (``init_digest``), so no run sends
        # them: untimed set-up that only lengthened the suite (at 100 Mbit/s 25M parameters
        # take ~20 s to cross four hosts).
        if run.method in HVD_PS_METHODS:
            import hvd_ps

            sync = strategy(run, self.hosts)  # its trainer names its own tensors and PS keys
            return hvd_ps.DistributedTrainer(params, "sgd", optim, sync=sync)
        prefix = f"run{index}."  # Horovod's tensor names, apart from the other runs'
        if run.method == "bound":  # the hosts never meet: Horovod inside each host only
            return hvd.DistributedTrainer(params, "sgd", optim, prefix=prefix,
                                          process_set=self.host_set)  # fmt: skip
        fp16 = hvd.Compression.fp16 if run.fp16_allreduce else hvd.Compression.none
        return hvd.DistributedTrainer(params, "sgd", optim, compression=fp16, prefix=prefix)

    def step_size(self, run: argparse.Namespace) -> int:
        # the stock KVStore sums the workers' gradients: scale by the global batch for the mean
        return run.batch * (self.size if self.stock else 1)

    def evaluate(self, run: argparse.Namespace, trainer, net, x, y) -> float:
        if run.method in HVD_PS_METHODS:
            with trainer.global_model():
                return accuracy(net, x, y)
        return accuracy(net, x, y)

    def barrier(self, index: int) -> None:
        """Every rank done with run ``index`` (in the bound the hosts never meet: one that is
        done waits for the others), so that the next run starts together."""
        if not self.stock:
            import horovod.mxnet as hvd

            hvd.allreduce(mx.nd.zeros(1), name=f"suite.done{index}").wait_to_read()

    def finish(self) -> None:
        if self.hvd_ps:
            import hvd_ps

            hvd_ps.shutdown()
        elif not self.stock:
            import horovod.mxnet as hvd

            hvd.shutdown()


def init_digest(arrays) -> str:
    """A digest of the initial parameters: equal on every rank, or the jobs' runs differ."""
    h = hashlib.sha1()
    for a in arrays:
        h.update(a.asnumpy().tobytes())
    return h.hexdigest()


def accuracy(net, x, y) -> float:
    pred = net(mx.nd.array(x)).argmax(axis=1).asnumpy().astype(np.int64)
    return float((pred == y).mean())


def one_run(job: Job, run: argparse.Namespace, index: int, dev: str) -> dict:
    """Run ``index`` of the job on this rank: its measurements."""
    local_rank = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    out = {"name": run.name, "method": run.method, "steps": [], "fwd_bwd": []}
    out["run_started"] = time.time()
    if local_rank == 0:
        out["run_counters_start"] = counters(dev)
    x_tr, y_tr, x_te, y_te = load_data(run.seed, job.rank, job.size)
    mx.random.seed(run.seed)
    net = build_net(run.hidden)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    params = net.collect_params()
    trainer = job.trainer(run, params, index)
    arrays = [p.data() for p in params.values()]
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(run.seed + 1000 * job.rank)
    per_epoch = len(x_tr) // run.batch
    out["params"] = int(sum(np.prod(p.shape) for p in params.values()))
    out["init_digest"] = init_digest(arrays)
    out["set_up"] = time.time()  # data, model, trainer (hvd_ps registers its PS keys later,
    # in the first step)
    stats = (lambda: dict(trainer.stats())) if run.method in HVD_PS_METHODS else dict
    # one group per host: an emulated straggler's group is its host (examples/straggler.py)
    slow = straggler.Straggler(run.slow_group, run.slowdown, job.rank // job.ranks_per_host)
    grads = [p.grad() for p in params.values()]

    def one_step(idx) -> float:
        t0 = time.perf_counter()
        slow.start()
        x, y = mx.nd.array(x_tr[idx]), mx.nd.array(y_tr[idx])
        with mx.autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        for g in grads:
            g.wait_to_read()
        slow.computed(grads)
        slow.finish()  # the straggler's extra time is part of its computation
        t1 = time.perf_counter()
        trainer.step(job.step_size(run))
        for a in arrays:
            a.wait_to_read()
        t2 = time.perf_counter()
        out["steps"].append(t2 - t0)
        out["fwd_bwd"].append(t1 - t0)
        return float(loss.mean().asscalar())

    order = rng.permutation(len(x_tr))
    if run.mode == "throughput":
        for i in range(run.warmup + run.steps):
            if i == run.warmup:
                mx.nd.waitall()  # nothing of the warm-up still on its way
                if local_rank == 0:
                    out["counters_start"] = counters(dev)
                out["window_start"] = time.time()
                stats0 = stats()
            j = i % per_epoch
            if j == 0 and i:
                order = rng.permutation(len(x_tr))
            out["last_loss"] = one_step(order[j * run.batch : (j + 1) * run.batch])
        out["window_end"] = time.time()
        stats1 = stats()
        mx.nd.waitall()  # a push no step waited for (EASGD's d) still crosses in the window
        if local_rank == 0:
            out["counters_end"] = counters(dev)
        if stats1:
            out["stats"] = {k: stats1[k] - stats0.get(k, 0) for k in stats1}
        if run.eval:
            t = time.perf_counter()
            out["test_accuracy"] = job.evaluate(run, trainer, net, x_te, y_te)
            out["eval_s"] = time.perf_counter() - t
    else:
        train_s, evals = 0.0, []
        for epoch in range(1, run.epochs + 1):
            order = rng.permutation(len(x_tr))
            t = time.perf_counter()
            for j in range(per_epoch):
                one_step(order[j * run.batch : (j + 1) * run.batch])
            train_s += time.perf_counter() - t
            t = time.perf_counter()
            acc = job.evaluate(run, trainer, net, x_te, y_te)
            evals.append({"epoch": epoch, "train_s": train_s, "test_accuracy": acc,
                          "eval_s": time.perf_counter() - t})  # fmt: skip
        out["evals"] = evals
        first = next((e for e in evals if e["test_accuracy"] >= run.target), None)
        out["reached"] = first is not None
        out["reached_epoch"] = first["epoch"] if first else None
        out["train_s"] = first["train_s"] if first else train_s
    mx.nd.waitall()
    if local_rank == 0:
        out["run_counters_end"] = counters(dev)
    out["run_ended"] = time.time()
    # the peak memory so far: a run that kept the previous run's model alive would show here
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = load_runs(args.runs)
    timeline = {"started": STARTED}
    job = Job(runs, args.ranks_per_host)
    timeline["setup"] = time.time()
    results = []
    for index, run in enumerate(runs):
        results.append(one_run(job, run, index, args.dev))
        job.barrier(index)
        gc.collect()  # the run's model, trainer and buffers, before the next run builds its own
    timeline["trained"] = time.time()
    job.finish()
    timeline["finished"] = time.time()
    with open(f"{args.out}.rank{job.rank}.json", "w") as f:
        json.dump({"rank": job.rank, "size": job.size, "runs": results, "timeline": timeline}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
