"""A plain MXNet worker (no hvd_ps import) run against a tier of hvd_ps servers.

Started by tests/jobs/test_stock_kvstore.py with MXNet's launch environment (``DMLC_ROLE=worker``,
``DMLC_PS_ROOT_URI`` ...), as ``python stock_worker.py <scenario> <json-args>``. It does
what a user's stock script does (``mx.kv.create``, ``kv.init/push/pull``,
``kv.set_optimizer``, a Gluon ``Trainer``) and prints ``RESULT <json>`` with what it pulled;
the test computes the expected values itself. The data each worker pushes is a function of
its rank and the step (:func:`grad`), which the test recomputes.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import mxnet as mx
import numpy as np

SHAPE = (6, 5)
BIG = 200  # elements of the big key; MXNET_KVSTORE_BIGARRAY_BOUND is set below it
ROWS = (10, 3)  # row-sparse key: 10 rows of 3


def grad(rank, step, shape, seed):
    """What worker ``rank`` pushes at ``step`` (the test recomputes it)."""
    rng = np.random.default_rng(1000 * seed + 17 * rank + step)
    return rng.standard_normal(shape).astype(np.float32)


def initial(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def sparse_rows(rank, step):
    """The rows worker ``rank`` pushes at ``step`` (overlapping between workers)."""
    return sorted({(rank + step) % ROWS[0], (3 * step + 1) % ROWS[0], (rank * 5 + 2) % ROWS[0]})


def rsp(values, rows, shape):
    return mx.nd.sparse.row_sparse_array((values[rows], np.array(rows, np.int64)), shape=shape)


def keys_job(kv, args):
    """Dense float32, float16, big (sharded) and row-sparse keys: init, push, pull."""
    steps = int(args["steps"])
    dense = {
        "dense": (SHAPE, "float32", 1),
        "half": (SHAPE, "float16", 2),
        "big": ((BIG,), "float32", 3),
    }
    keys = [k for k in args["keys"] if k in dense]
    if args.get("compression"):  # before init, as MXNet requires (and Gluon's Trainer does)
        kv.set_gradient_compression(args["compression"])
    for i, name in enumerate(keys):
        shape, dtype, seed = dense[name]
        kv.init(10 + i, mx.nd.array(initial(shape, seed), dtype=dtype))
    if "sparse" in args["keys"]:
        full = initial(ROWS, 4)
        kv.init(20, mx.nd.sparse.row_sparse_array((full, np.arange(ROWS[0])), shape=ROWS))
    if args.get("optimizer"):
        kv.set_optimizer(mx.optimizer.create(**args["optimizer"]))
    barrier_each = bool(args.get("barrier_each"))
    out = {name: [] for name in args["keys"]}
    for step in range(steps):
        if barrier_each:  # async, no optimizer: one worker at a time, in rank order
            for turn in range(kv.num_workers):
                if turn == kv.rank:
                    push_all(kv, keys, dense, args, step)
                    mx.nd.waitall()  # the push op ends when the server has applied it
                kv._barrier()
                pull_all(kv, keys, dense, args, out)
                kv._barrier()  # everyone has pulled before the next worker pushes
        else:
            push_all(kv, keys, dense, args, step)
            if args["sync"]:
                pull_all(kv, keys, dense, args, out)
    mx.nd.waitall()
    kv._barrier()  # every push applied everywhere
    pull_all(kv, keys, dense, args, out)
    return {"rank": kv.rank, "num_workers": kv.num_workers, "pulled": out}


def push_all(kv, keys, dense, args, step):
    for i, name in enumerate(keys):
        shape, dtype, seed = dense[name]
        kv.push(10 + i, mx.nd.array(grad(kv.rank, step, shape, seed), dtype=dtype))
    if "sparse" in args["keys"]:
        rows = sparse_rows(kv.rank, step)
        kv.push(20, rsp(grad(kv.rank, step, ROWS, 4), rows, ROWS))


def pull_all(kv, keys, dense, args, out):
    for i, name in enumerate(keys):
        shape, dtype, _ = dense[name]
        got = mx.nd.zeros(shape, dtype=dtype)
        kv.pull(10 + i, out=got)
        out[name].append(got.asnumpy().astype(np.float64).tolist())
    if "sparse" in args["keys"]:
        got = mx.nd.sparse.zeros("row_sparse", ROWS)
        kv.row_sparse_pull(20, out=got, row_ids=mx.nd.arange(ROWS[0], dtype="int64"))
        out["sparse"].append(got.asnumpy().astype(np.float64).tolist())


class EvilSGD(mx.optimizer.SGD):
    """An optimizer subclass defined outside MXNet whose unpickling runs a shell command."""

    path = "/nonexistent"

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def trainer_job(kv, args):
    """A stock Gluon Trainer on a linear model; each worker trains on its own batches."""
    from mxnet import autograd, gluon

    n_in, n_out, batch, steps = 4, 3, int(args["batch"]), int(args["steps"])
    net = gluon.nn.Dense(n_out, in_units=n_in)
    net.initialize()
    net.weight.set_data(mx.nd.array(initial((n_out, n_in), 5)))
    net.bias.set_data(mx.nd.array(initial((n_out,), 6)))
    opt_args = dict(args["optimizer"])
    if opt_args.pop("name") == "evil":
        EvilSGD.path = args["marker"]
        opt = EvilSGD(**opt_args)
    else:
        opt = "sgd"
    kw = (
        {}
        if args["update_on_kvstore"] == "default"
        else {"update_on_kvstore": args["update_on_kvstore"]}
    )
    trainer = gluon.Trainer(
        net.collect_params(), opt, opt_args if opt == "sgd" else None, kvstore=kv, **kw
    )
    loss_fn = gluon.loss.L2Loss()
    for step in range(steps):
        x = mx.nd.array(grad(kv.rank, step, (batch, n_in), 7))
        y = mx.nd.array(grad(kv.rank, step, (batch, n_out), 8))
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch * kv.num_workers)  # the union of the workers' batches
    return {
        "rank": kv.rank,
        "num_workers": kv.num_workers,
        "update_on_kvstore": trainer._update_on_kvstore,
        "weight": net.weight.data().asnumpy().astype(np.float64).tolist(),
        "bias": net.bias.data().asnumpy().astype(np.float64).tolist(),
    }


def main():
    # a bound on the whole worker: a hang becomes exit code 7, never a stuck test
    watchdog = threading.Timer(float(os.environ.get("STOCK_WORKER_TIMEOUT", "90")), os._exit, (7,))
    watchdog.daemon = True
    watchdog.start()
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    if args.get("import_hvd_ps"):  # a stock script that also imports hvd_ps keeps working
        import hvd_ps  # noqa: F401
    kv = mx.kv.create(args["kvstore"])
    args["sync"] = "sync" in args["kvstore"]
    result = {"keys": keys_job, "trainer": trainer_job}[scenario](kv, args)
    print("RESULT " + json.dumps(result), flush=True)
    # leaving normally frees the KVStore: ps-lite's finalize lets the servers end with code 0


if __name__ == "__main__":
    main()
