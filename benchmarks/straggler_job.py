"""One rank of one job of ``benchmarks/bench_stragglers.py``: digits with one slow group,
timed by the wall clock rather than by epochs.

examples/train_digits.py meets every rank at the end of each epoch (the job's loss and the
global model's accuracy are collectives), which would make every group wait for a straggler
once an epoch whatever the mode. Here no rank meets another outside the trainer: each group
trains its epochs at its own pace (``--slow-group G --slowdown F``: examples/straggler.py), and
after each of its own epochs the leader of group 0, a fast group, evaluates the global model
alone (``trainer.global_model(local=True)``; Horovod's own model for ``--sync horovod``),
noting the wall time since the common start, less the time its evaluations took. Rank 0
writes ``--out``: those evaluations, the first time at ``--target``, every group's training
time and counters, and the final global model's accuracy (evaluated after every group is done).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import argparse  # noqa: E402

import digits  # noqa: E402  (examples/digits.py: its data)
import horovod.mxnet as hvd  # noqa: E402
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
import straggler  # noqa: E402  (examples/straggler.py)
import strategy_flags  # noqa: E402
import train_digits  # noqa: E402  (its model and accuracy)

import hvd_ps  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    strategy_flags.add(p, outer_momentum=0.5, outer_lr=0.5)
    straggler.add(p)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    strategy_flags.finish(args)
    straggler.check(p, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    baseline = args.sync == "horovod"
    if baseline:
        hvd.init()
    else:
        hvd_ps.init(group_size=args.group_size)
    rank, size = hvd.rank(), hvd.size()
    k = args.group_size or 1
    gid = rank // k if baseline else hvd_ps.global_group_id()
    leader = rank % k == 0 if baseline else hvd_ps.is_leader()
    x_tr, y_tr, x_te, y_te = digits.load_data(args.seed, 0.2, rank, size)
    mx.random.seed(args.seed)
    net = train_digits.build_net("128,64")
    net.initialize(mx.init.Xavier())
    net.hybridize()
    params = net.collect_params()
    grads = [p.grad() for p in params.values() if p.grad_req != "null"]
    trainer, desc = strategy_flags.make_trainer(
        args, params, {"learning_rate": 0.1, "momentum": 0.9}
    )
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    steps, batch = len(x_tr) // 32, 32
    rng = np.random.RandomState(args.seed + 1000 * rank)
    slow = straggler.Straggler(args.slow_group, args.slowdown, gid)
    watch = rank == 0
    evals, eval_s = [], 0.0
    if not baseline:  # the trainer's set-up (collective) before the clock starts
        with trainer.global_model():
            pass
    hvd.allreduce(mx.nd.zeros((1,)), name="straggler.start").wait_to_read()
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_tr))
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            x, y = mx.nd.array(x_tr[idx]), mx.nd.array(y_tr[idx])
            slow.start()
            with mx.autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            slow.computed(grads)
            trainer.step(batch)
            loss.wait_to_read()
            slow.finish()
        if watch:
            t = time.perf_counter()
            elapsed = t - start - eval_s  # training time so far, evaluations left out
            if baseline:
                acc = train_digits.accuracy(net, x_te, y_te)
            else:
                with trainer.global_model(local=True):
                    acc = train_digits.accuracy(net, x_te, y_te)
            eval_s += time.perf_counter() - t
            evals.append({"epoch": epoch, "s": elapsed, "acc": acc})
    trained = time.perf_counter() - start - eval_s
    stats = {} if baseline else trainer.stats()
    mine = dict(stats, group=gid, train_s=trained, samples=steps * batch * args.epochs,
                slept_s=slow.slept) if leader else None  # fmt: skip
    rows = [r for r in hvd.allgather_object(mine, name="straggler.groups") if r is not None]
    if baseline:
        final = train_digits.accuracy(net, x_te, y_te)
    else:
        with trainer.global_model():
            final = train_digits.accuracy(net, x_te, y_te)
    if rank == 0:
        first = next((e["s"] for e in evals if e["acc"] >= args.target), None)
        result = {"strategy": desc, "evals": evals, "time_to_target_s": first,
                  "final_accuracy": final, "groups": sorted(rows, key=lambda r: r["group"]),
                  "args": vars(args)}  # fmt: skip
        Path(args.out).write_text(json.dumps(result, indent=1))
    if baseline:
        hvd.shutdown()
    else:
        hvd_ps.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
