"""What a whole-job checkpoint costs, against numpy.save writing the same bytes to the same disk.

The model of the cluster suite (an MLP 64-4096-4096-2048-10, 25.5M parameters) trains a few
steps under DiLoCo (so the servers hold an outer momentum and every group a local SGD momentum
and ``x_start``); then, in turns, ``trainer.save_checkpoint`` (every rank; each rank times its
own call, which is how long that rank stalls) and, on global rank 0, ``numpy.save`` of one
array of the checkpoint's size (its shards and manifest) into the same directory, with and
without an ``fsync`` (the checkpoint fsyncs: a crash must not leave half a file). Medians of
the repeats, side by side in one run, after ``--warmup`` first saves reported apart.

Run under ``mpirun`` (``-np 2`` gives 2 groups of one rank, each with its own parameters)::

    OMP_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1 mpirun -np 2 --oversubscribe \\
        python benchmarks/bench_checkpoint.py [--repeats 5] [--dir /tmp]

Writes benchmarks/results/checkpoint.json and checkpoint.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def checkpoint_bytes(path: str) -> int:
    """The manifest's size and its shards'."""
    from hvd_ps import checkpoint

    shards = checkpoint.read_manifest(path)["shards"]
    return os.path.getsize(path) + sum(s["bytes"] for s in shards)


def numpy_save(folder: str, nbytes: int, sync: bool) -> float:
    import numpy as np

    data = np.ones(nbytes // 4, dtype=np.float32)
    path = os.path.join(folder, "numpy.npy")
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        np.save(f, data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    took = time.perf_counter() - t0
    os.unlink(path)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", default="4096,4096,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="first saves, reported apart")
    ap.add_argument("--dir", default=None, help="where to write (default: a fresh temp dir)")
    ap.add_argument("--name", default="checkpoint")
    args = ap.parse_args()

    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps
    import hvd_ps.checkpoint

    hvd_ps.init(group_size=1)
    net = mx.gluon.nn.HybridSequential()
    units = 64
    for width in [int(w) for w in args.hidden.split(",")] + [10]:
        net.add(mx.gluon.nn.Dense(width, in_units=units))
        units = width
    net.initialize(mx.init.Xavier())
    params = net.collect_params()
    hvd_ps.broadcast_parameters(params)
    trainer = hvd_ps.DistributedTrainer(
        params, "sgd", {"learning_rate": 0.01, "momentum": 0.9}, sync=hvd_ps.DiLoCo(period=2)
    )
    x, y = mx.nd.random.uniform(shape=(32, 64)), mx.nd.zeros((32,))
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(4):
        with mx.autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(32)
    mx.nd.waitall()
    n_params = sum(p.data().size for p in params.values())

    folder = args.dir or (tempfile.mkdtemp(prefix="hvd_ps-bench-") if hvd.rank() == 0 else None)
    folder = hvd.broadcast_object(folder, root_rank=0, name="bench.dir")
    path = os.path.join(folder, "job.hvdps")
    load_before = os.getloadavg()[0]

    def timed_save() -> float:
        hvd.allreduce(mx.nd.zeros(1), name="bench.sync").wait_to_read()
        t0 = time.perf_counter()
        trainer.save_checkpoint(path)
        return time.perf_counter() - t0

    first = [timed_save() for _ in range(args.warmup)]
    if hvd.rank() == 0:  # numpy's first files too, in memory the machine has not touched yet
        for sync in (False, True):
            numpy_save(folder, checkpoint_bytes(path), sync=sync)
    saves, plain, synced = [], [], []
    for _ in range(args.repeats):
        saves.append(timed_save())
        if hvd.rank() == 0:
            size = checkpoint_bytes(path)
            plain.append(numpy_save(folder, size, sync=False))
            synced.append(numpy_save(folder, size, sync=True))
    every = hvd.allgather_object((first, saves), name="bench.stalls")
    if hvd.rank() == 0:
        size = checkpoint_bytes(path)
        med = statistics.median
        slowest = [max(rank[1][i] for rank in every) for i in range(args.repeats)]
        first_slowest = [max(rank[0][i] for rank in every) for i in range(args.warmup)]
        worst = med(slowest)
        result = {
            "parameters": n_params,
            "ranks": hvd.size(),
            "groups": hvd_ps.num_groups(),
            "file_bytes": size,
            "shards": len(hvd_ps.checkpoint.read_manifest(path)["shards"]),
            "repeats": args.repeats,
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "first_saves_s_slowest_rank": first_slowest,
            "save_s_slowest_rank": slowest,
            "save_s_per_rank": [rank[1] for rank in every],
            "numpy_save_s": med(plain),
            "numpy_save_fsync_s": med(synced),
            "numpy_save_all": plain,
            "numpy_save_fsync_all": synced,
            "ratio": worst / med(plain),
            "ratio_fsync": worst / med(synced),
            "ratio_to_fastest": worst / min(plain),
            "ratio_fsync_to_fastest": worst / min(synced),
        }
        firsts = ", ".join(f"{t:.2f}" for t in first_slowest)
        lines = [
            f"# Whole-job checkpoint ({n_params / 1e6:.1f}M parameters, DiLoCo, "
            f"{hvd.size()} ranks in {hvd_ps.num_groups()} groups)",
            "",
            f"Checkpoint: {size / 1e6:.0f} MB in {result['shards']} shards and a manifest (every "
            "group's parameters, SGD momentum and x_start, the PS keys and the servers' outer "
            f"momentum). Medians of {args.repeats} saves after {args.warmup} first ones; the "
            "spread is the range over the repeats; save_checkpoint is timed on every rank, the "
            "slowest rank of each save counts. Load average (1 min) "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
            "",
            "| what | seconds | ratio to numpy.save | ratio to numpy.save + fsync |",
            "|---|---|---|---|",
            f"| numpy.save of {size / 1e6:.0f} MB | {med(plain):.3f} "
            f"({min(plain):.3f}-{max(plain):.3f}) | 1.00 | |",
            f"| numpy.save + fsync | {med(synced):.3f} ({min(synced):.3f}-{max(synced):.3f}) | "
            f"{med(synced) / med(plain):.2f} | 1.00 |",
            f"| save_checkpoint, slowest rank | {worst:.3f} ({min(slowest):.3f}-"
            f"{max(slowest):.3f}) | {worst / med(plain):.2f} | {worst / med(synced):.2f} |",
            "",
            f"Against the fastest numpy.save of the run: {worst / min(plain):.2f}x without fsync, "
            f"{worst / min(synced):.2f}x with it. numpy.save writes a new file each time (as "
            "np.save(path) does), whose memory this VM may have handed back to its host (free "
            "page reporting), hence its spread; the checkpoint overwrites its spares in place.",
            "",
            f"The first saves took {firsts} s (the first registers the servers' companion keys; "
            "the first two write new files, later ones overwrite the spares in place).",
        ]
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        if args.dir is None:
            shutil.rmtree(folder)
    hvd_ps.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
