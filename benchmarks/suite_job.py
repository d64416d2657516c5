"""One rank of one run of ``benchmarks/cluster_suite.py`` (started by it under ``mpirun``).

Trains an MLP on scikit-learn's digits (each rank its own equal shard, same seed and model
everywhere) with one method, and writes this rank's measurements to ``--out``.rank<N>.json:

* ``--mode throughput``: ``--warmup`` steps, then ``--steps`` timed steps. A step is timed from
  its forward pass until its parameters are ready to read; ``fwd_bwd_s`` (until the gradients
  are ready) is its compute, the rest is what ``trainer.step`` costs (for hvd_ps split further
  by ``trainer.stats()``). The local rank 0 of each host reads its interface counters at the
  start and end of the timed window. With ``--eval`` the global model is then evaluated on
  the test set (timed apart, ``eval_s``).
* ``--mode accuracy``: ``--epochs`` epochs; after each, every rank evaluates the global model
  (timed apart, not counted as training time). ``train_s`` is the training time until the
  first epoch at ``--target`` test accuracy; every run trains all its epochs, so that the final
  accuracies of two methods compare.

Methods: ``horovod`` (allreduce over all ranks), ``bound`` (Horovod allreduce inside each host
only, groups never exchange: the no-communication bound), ``dist_sync`` (a stock Gluon
``Trainer(kvstore='dist_sync')``, every rank a worker, no Horovod), and hvd_ps's
``gradient_push``, ``model_average``, ``easgd``, ``diloco`` (one group per host).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

STARTED = time.time()  # the timeline of a job: where its wall time goes outside the steps

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

HVD_PS_METHODS = ("gradient_push", "model_average", "easgd", "diloco")
METHODS = ("horovod", "bound", "dist_sync") + HVD_PS_METHODS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--mode", choices=("throughput", "accuracy"), default="throughput")
    p.add_argument("--hidden", default="4096,4096,2048")
    p.add_argument("--ranks-per-host", type=int, required=True)
    p.add_argument("--period", type=int, default=16)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="throughput: evaluate after the window")
    p.add_argument("--fp16-allreduce", action="store_true",
                   help="horovod: compress its allreduce to float16 (the peer of hvd_ps's "
                   "float16 wire)")  # fmt: skip
    p.add_argument("--dev", default="hvps0", help="the host's inter-host interface")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


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


def strategy(args: argparse.Namespace, groups: int):
    import hvd_ps

    kw = {"overlap": args.overlap} if args.overlap else {}
    if args.method == "gradient_push":
        return hvd_ps.GradientPush()
    if args.method == "model_average":
        return hvd_ps.ModelAverage(period=args.period, **kw)
    if args.method == "easgd":
        return hvd_ps.EASGD(period=args.period, alpha=0.9 / groups, **kw)
    return hvd_ps.DiLoCo(period=args.period, outer_lr=0.7, momentum=0.5, **kw)


class Setup:
    """The method's trainer, and how to evaluate its global model."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hvd_ps = args.method in HVD_PS_METHODS
        if args.method == "dist_sync":
            self.rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
            self.size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
        else:
            import horovod.mxnet as hvd

            if self.hvd_ps:
                import hvd_ps

                hvd_ps.init(group_size=args.ranks_per_host)
            elif args.method == "bound":
                size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
                r = args.ranks_per_host
                sets = [hvd.ProcessSet(list(range(g, g + r))) for g in range(0, size, r)]
                hvd.init(process_sets=sets)
                self.group = next(s for s in sets if hvd.rank() in s.ranks)
            else:
                hvd.init()
            self.rank, self.size = hvd.rank(), hvd.size()
        self.hosts = self.size // args.ranks_per_host

    def trainer(self, params):
        a = self.args
        optim = {"learning_rate": a.lr, "momentum": a.momentum}
        if a.method == "dist_sync":
            kv = mx.kv.create("dist_sync")  # MXNet's stock KVStore; servers started by the suite
            return mx.gluon.Trainer(params, "sgd", optim, kvstore=kv)
        import horovod.mxnet as hvd

        # A user's script broadcasts the initial parameters first (hvd.broadcast_parameters,
        # hvd_ps.broadcast_parameters). Here every rank builds them from one seed, and the
        # suite checks that they are equal on every rank (``init_digest``), so no job sends
        # them: untimed set-up that only lengthened the suite (at 100 Mbit/s 25M parameters
        # take ~20 s to cross four hosts).
        if self.hvd_ps:
            import hvd_ps

            sync = strategy(a, self.hosts)
            return hvd_ps.DistributedTrainer(params, "sgd", optim, sync=sync)
        if a.method == "bound":  # the hosts never meet: Horovod inside each host only
            return hvd.DistributedTrainer(params, "sgd", optim, process_set=self.group)
        fp16 = hvd.Compression.fp16 if a.fp16_allreduce else hvd.Compression.none
        return hvd.DistributedTrainer(params, "sgd", optim, compression=fp16)

    def step_size(self) -> int:
        # the stock KVStore sums the workers' gradients: scale by the global batch for the mean
        return self.args.batch * (self.size if self.args.method == "dist_sync" else 1)

    def evaluate(self, trainer, net, x, y) -> float:
        if self.hvd_ps:
            with trainer.global_model():
                return accuracy(net, x, y)
        return accuracy(net, x, y)

    def finish(self) -> None:
        if self.hvd_ps:
            import hvd_ps

            hvd_ps.shutdown()
        elif self.args.method != "dist_sync":
            import horovod.mxnet as hvd

            # Horovod's shutdown ends every rank's collectives: in the bound the hosts never
            # meet, so one that is done must wait for the others before it leaves
            hvd.allreduce(mx.nd.zeros(1), name="suite.done").wait_to_read()
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


def main(argv=None) -> int:
    args = parse_args(argv)
    timeline = {"started": STARTED}
    s = Setup(args)
    timeline["setup"] = time.time()
    x_tr, y_tr, x_te, y_te = load_data(args.seed, s.rank, s.size)
    mx.random.seed(args.seed)
    net = build_net(args.hidden)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    params = net.collect_params()
    trainer = s.trainer(params)
    timeline["trainer"] = time.time()
    arrays = [p.data() for p in params.values()]
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(args.seed + 1000 * s.rank)
    per_epoch = len(x_tr) // args.batch
    local_rank = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    out = {"rank": s.rank, "size": s.size, "method": args.method, "steps": [], "fwd_bwd": []}
    out["params"] = int(sum(np.prod(p.shape) for p in params.values()))
    out["init_digest"] = init_digest(arrays)

    def one_step(idx) -> float:
        t0 = time.perf_counter()
        x, y = mx.nd.array(x_tr[idx]), mx.nd.array(y_tr[idx])
        with mx.autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        for p in params.values():
            p.grad().wait_to_read()
        t1 = time.perf_counter()
        trainer.step(s.step_size())
        for a in arrays:
            a.wait_to_read()
        t2 = time.perf_counter()
        out["steps"].append(t2 - t0)
        out["fwd_bwd"].append(t1 - t0)
        return float(loss.mean().asscalar())

    order = rng.permutation(len(x_tr))
    if args.mode == "throughput":
        total = args.warmup + args.steps
        for i in range(total):
            if i == args.warmup:
                if local_rank == 0:
                    out["counters_start"] = counters(args.dev)
                out["window_start"] = time.time()
                stats0 = dict(trainer.stats()) if s.hvd_ps else {}
            j = i % per_epoch
            if j == 0 and i:
                order = rng.permutation(len(x_tr))
            out["last_loss"] = one_step(order[j * args.batch : (j + 1) * args.batch])
            if i == 0:
                timeline["first_step"] = time.time()
        out["window_end"] = time.time()
        if local_rank == 0:
            out["counters_end"] = counters(args.dev)
        if s.hvd_ps:
            stats1 = trainer.stats()
            out["stats"] = {k: stats1[k] - stats0.get(k, 0) for k in stats1}
        if args.eval:
            t = time.perf_counter()
            out["test_accuracy"] = s.evaluate(trainer, net, x_te, y_te)
            out["eval_s"] = time.perf_counter() - t
    else:
        train_s, evals = 0.0, []
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(len(x_tr))
            t = time.perf_counter()
            for j in range(per_epoch):
                one_step(order[j * args.batch : (j + 1) * args.batch])
            train_s += time.perf_counter() - t
            t = time.perf_counter()
            acc = s.evaluate(trainer, net, x_te, y_te)
            evals.append({"epoch": epoch, "train_s": train_s, "test_accuracy": acc,
                          "eval_s": time.perf_counter() - t})  # fmt: skip
        out["evals"] = evals
        first = next((e for e in evals if e["test_accuracy"] >= args.target), None)
        out["reached"] = first is not None
        out["reached_epoch"] = first["epoch"] if first else None
        out["train_s"] = first["train_s"] if first else train_s
    timeline["trained"] = time.time()
    s.finish()
    timeline["finished"] = time.time()
    out["timeline"] = timeline
    with open(f"{args.out}.rank{s.rank}.json", "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
