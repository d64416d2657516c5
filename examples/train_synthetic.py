"""Throughput of a Gluon model-zoo CNN on generated images with hvd_ps (or plain Horovod).

Every rank trains ``--model`` (random init, nothing downloaded) on random images of shape
3 x ``--image-size`` x ``--image-size`` with random labels; only speed is measured. Rank 0
prints the images/s of the whole job over each window of ``--window`` steps and, at the end,
the trainer's breakdown of where the time of ``step()`` went (``trainer.stats()``).

Run (4 ranks in 2 groups; on a small machine keep one thread per rank)::

    OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_synthetic.py --group-size 2
    OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_synthetic.py --group-size 2 \\
        --sync gradient_push --model mobilenet0.25 --steps 50
    OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_synthetic.py --sync horovod
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import horovod.mxnet as hvd  # noqa: E402
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
import strategy_flags  # noqa: E402  (examples/strategy_flags.py)
from console import Console  # noqa: E402  (examples/console.py)

import hvd_ps  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18_v1", help="a gluon.model_zoo.vision model name")
    strategy_flags.add(p, outer_momentum=0.9)
    p.add_argument("--steps", type=int, default=40, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    p.add_argument("--window", type=int, default=10, help="steps per images/s line")
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--json", type=str, default=None, help="write the measurements here")
    args = p.parse_args(argv)
    strategy_flags.finish(args)
    for name in ("steps", "window", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    baseline = args.sync == "horovod"
    if baseline:
        hvd.init()
        ngroups = 1
    else:
        hvd_ps.init(group_size=args.group_size)
        ngroups = hvd_ps.num_groups()
    rank, size = hvd.rank(), hvd.size()
    out = Console(rank == 0)  # whole lines from rank 0 only (horovodrun tags every chunk)

    # a few fixed random batches per rank, cycled (data loading is not what is measured)
    rng = np.random.RandomState(1234 + rank)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    batches = [
        (
            mx.nd.array(rng.standard_normal(shape).astype(np.float32)),
            mx.nd.array(rng.randint(0, args.classes, args.batch_size).astype(np.float32)),
        )
        for _ in range(4)
    ]

    mx.random.seed(0)
    net = mx.gluon.model_zoo.vision.get_model(args.model, classes=args.classes, pretrained=False)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize(static_alloc=True, static_shape=True)
    # Finish deferred initialisation with one forward pass in training mode: in inference mode
    # MKL-DNN would keep the convolution weights in its own layout, which Horovod's broadcast
    # cannot read ("We can't generate TBlob for MKLDNN data").
    with mx.autograd.train_mode():
        net(batches[0][0]).wait_to_read()
    params = net.collect_params()
    optim = {"learning_rate": args.lr, "momentum": 0.9}
    trainer, sync_desc = strategy_flags.make_trainer(args, params, optim)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    n_params = sum(int(np.prod(p.shape)) for p in params.values() if p.grad_req != "null")
    out.line(
        f"{args.model}: {n_params / 1e6:.2f} M trained parameters, {size} ranks in "
        f"{ngroups} group(s), batch {args.batch_size} per rank of 3x{args.image_size}x"
        f"{args.image_size}; sync: {sync_desc}"
    )

    def step(i: int) -> mx.nd.NDArray:
        x, y = batches[i % len(batches)]
        with mx.autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(args.batch_size)
        return loss

    for i in range(args.warmup):
        step(i).wait_to_read()
    mx.nd.waitall()
    windows = []
    start = t0 = time.perf_counter()
    done = 0
    for i in range(args.steps):
        loss = step(i)
        if (i + 1) % args.window == 0 or i + 1 == args.steps:
            loss.wait_to_read()
            t1 = time.perf_counter()
            n = i + 1 - done
            rate = n * args.batch_size * size / (t1 - t0)
            windows.append({"steps": n, "seconds": t1 - t0, "images_per_s": rate})
            out.line(
                f"steps {done + 1:4d}-{i + 1:4d}: {rate:8.1f} images/s "
                f"({(t1 - t0) / n * 1000:.0f} ms/step, loss {loss.mean().asscalar():.3f})"
            )
            done, t0 = i + 1, t1
    mx.nd.waitall()
    elapsed = time.perf_counter() - start
    total_rate = args.steps * args.batch_size * size / elapsed
    stats = {} if baseline else trainer.stats()
    out.line(f"total: {total_rate:.1f} images/s over {args.steps} steps ({elapsed:.1f} s)")
    if stats:
        phases = ("compute_s", "allreduce_s", "update_s", "exchange_s")
        timed = sum(stats[k] for k in phases) or 1.0
        out.line(
            f"trainer.stats() on rank 0: {int(stats['steps'])} steps (warm-up included), "
            f"{int(stats['exchanges'])} PS exchanges, "
            f"{stats['bytes_pushed'] / 1e6:.1f} MB pushed, "
            f"{stats['bytes_pulled'] / 1e6:.1f} MB pulled"
        )
        for k in phases:
            out.line(f"  {k[:-2]:10s} {stats[k]:8.2f} s  {100 * stats[k] / timed:5.1f}%")
    if rank == 0:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "model": args.model,
                        "sync": args.sync,
                        "strategy": sync_desc,
                        "ranks": size,
                        "groups": ngroups,
                        "batch_size": args.batch_size,
                        "images_per_s": total_rate,
                        "seconds": elapsed,
                        "windows": windows,
                        "stats": stats,
                        "args": vars(args),
                    },
                    f,
                    indent=2,
                )
    if baseline:
        hvd.shutdown()
    else:
        hvd_ps.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
