"""Train an MLP on scikit-learn's digits with hvd_ps's PyTorch front end (or plain Horovod).

The PyTorch twin of ``train_digits.py``: the same flags, data shards, model shape, lines and
``--json``. Groups of ranks train with Horovod allreduce inside the group; every ``--period``
steps the group leaders meet at the parameter-server tier with the chosen strategy, and each
epoch the *global* model is evaluated on the held-out test split.

Run (4 ranks in 2 groups; on a small machine keep one thread per rank)::

    OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_torch.py --group-size 2
    OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_torch.py --sync horovod

``--sync horovod`` uses no parameter server at all: ``horovod.torch.DistributedOptimizer``
allreduces every step over all ranks (the baseline).
"""

from __future__ import annotations

import os
import sys
import time

# one thread per rank: several ranks share a few cores (before torch loads)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import torch  # noqa: E402  (before any Horovod binding: docs/troubleshooting.md)

# isort: split
import console  # noqa: E402  (examples/console.py)
import digits  # noqa: E402  (examples/digits.py: what both digits examples share)
import horovod.torch as hvd  # noqa: E402
import numpy as np  # noqa: E402
import straggler  # noqa: E402  (examples/straggler.py)
import strategy_flags  # noqa: E402  (examples/strategy_flags.py)

import hvd_ps  # noqa: E402
import hvd_ps.torch as hps  # noqa: E402


def build_net(hidden: str, seed: int) -> torch.nn.Sequential:
    """The MLP of train_digits.py: Xavier-uniform weights, zero biases."""
    torch.manual_seed(seed)
    sizes = digits.widths(hidden)
    layers = []
    for units, width in zip(sizes[:-1], sizes[1:]):
        layer = torch.nn.Linear(units, width)
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        layers += [layer, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def make_optimizer(args, net):
    """(optimizer, description): Horovod's own for ``--sync horovod``, else hvd_ps's.

    Broadcasts the initial parameters first, so every rank (and the PS) starts the same."""
    local = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    named = net.named_parameters()
    if args.sync == "horovod":
        hvd.broadcast_parameters(net.state_dict(), root_rank=0)
        made = hvd.DistributedOptimizer(local, named_parameters=named)
        return made, "Horovod allreduce over all ranks"
    hps.broadcast_parameters(net.state_dict(), root_rank=0)
    sync = strategy_flags.make_strategy(args)
    made = hps.DistributedOptimizer(local, named_parameters=named, sync=sync, wire=args.wire)
    return made, strategy_flags.describe(args, sync)


def main(argv=None) -> int:
    args = digits.parse_args(__doc__.split("\n\n")[0], argv)
    start = time.perf_counter()
    baseline = args.sync == "horovod"
    if baseline:
        hvd.init()
        gid, ngroups, leader, group_set = 0, 1, hvd.rank() == 0, hvd.global_process_set
        layout = [list(range(hvd.size()))]
    else:
        hps.init(group_size=args.group_size)
        # labels: the group's id on the tier, so that jobs sharing one tell their groups apart
        gid, ngroups, leader, group_set = (
            hvd_ps.global_group_id(),
            hvd_ps.num_groups(),
            hvd_ps.is_leader(),
            hvd_ps.group(),
        )
        layout = hvd_ps.groups()
    rank, size = hvd.rank(), hvd.size()
    out = console.Console(rank == 0, "none" if args.quiet else args.progress)
    shard, shards, place = rank, size, ""
    if not baseline and hvd_ps.total_groups() > hvd_ps.num_groups():
        # several jobs share one PS tier: shard by the global group id (as train_digits.py)
        shard = hvd_ps.global_group_id() * hvd_ps.group_size() + hvd_ps.group_rank()
        shards = hvd_ps.total_groups() * hvd_ps.group_size()
        first = hvd_ps.global_group_id() - hvd_ps.group_id()
        place = f", global groups {first}..{first + ngroups - 1} of {hvd_ps.total_groups()}"
    x_tr, y_tr, x_te, y_te = digits.load_data(args.seed, args.test_size, shard, shards)

    net = build_net(args.hidden, args.seed)
    optimizer, sync_desc = make_optimizer(args, net)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = len(x_tr) // args.batch_size
    ckpt = os.path.join(args.checkpoint_dir, "train_digits.hvdps") if args.checkpoint_dir else None
    every = args.checkpoint_every or steps
    if ckpt:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        if os.path.exists(ckpt):  # rank 0's file system decides; every rank loads it
            optimizer.load_checkpoint(ckpt)
    resumed = optimizer.t if ckpt else 0  # steps already taken by the run that saved
    groups_desc = ", ".join(f"{i}: ranks {g}" for i, g in enumerate(layout))
    out.line(
        f"digits: {size} ranks in {ngroups} group(s) ({groups_desc}{place}); {len(x_tr)} training "
        f"samples per rank, {len(x_te)} test samples, {steps} steps per epoch"
    )
    out.line(f"sync: {sync_desc}")
    if resumed:
        out.line(f"resumed from {ckpt} after step {resumed} (epoch {resumed // steps + 1})")

    history = []
    train_start = time.perf_counter()
    rng = np.random.RandomState(args.seed + 1000 * shard)
    # --sync horovod has no groups: the straggler is then ranks [G k, G k + k) for k = group size
    me = rank // (args.group_size or 1) if baseline else gid
    slow = straggler.Straggler(args.slow_group, args.slowdown, me)
    if args.slow_group is not None:
        out.line(straggler.describe(args.slow_group, args.slowdown))
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(x_tr))  # drawn for skipped epochs too: the same data order
        skip = min(max(resumed - (epoch - 1) * steps, 0), steps)
        if skip == steps:
            continue  # trained before the checkpoint
        total = 0.0
        with out.bar(steps - skip, f"epoch {epoch}/{args.epochs}") as bar:
            for i in range(skip, steps):
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                x = torch.from_numpy(x_tr[idx])
                y = torch.from_numpy(y_tr[idx]).long()
                slow.start()
                optimizer.zero_grad()
                loss = loss_fn(net(x), y)
                loss.backward()
                slow.computed([])  # torch computed the gradients synchronously
                optimizer.step()
                slow.finish()
                if ckpt and optimizer.t % every == 0:
                    optimizer.save_checkpoint(ckpt)
                total += float(loss.detach())
                bar.set_postfix_str(f"loss {total / (i + 1 - skip):.4f}", refresh=False)
                bar.update(1)
        train_s = time.perf_counter() - t0

        # mean training loss: over the group and over all ranks
        mine = torch.tensor([total / (steps - skip)])
        group_loss = hvd.allreduce(mine, name=f"digits.gloss.{epoch}", process_set=group_set)
        all_loss = hvd.allreduce(mine, name=f"digits.loss.{epoch}")
        # test accuracy of the group's own model (leaders), then of the global model; each
        # rank keeps its local parameters for training
        own_acc = accuracy(net, x_te, y_te) if leader else float("nan")
        if baseline:
            acc = own_acc if leader else accuracy(net, x_te, y_te)
        else:
            with optimizer.global_model(net):  # local parameters come back after the block
                acc = accuracy(net, x_te, y_te)
        rows = digits.group_figures(hvd, leader, gid, float(group_loss), own_acc)
        hist = {
            "epoch": epoch,
            "loss": float(all_loss),
            "test_acc": acc,
            "groups": [{"group": g, "loss": lo, "test_acc": a} for g, lo, a in rows],
            "train_s": train_s,
            "elapsed_s": time.perf_counter() - train_start,
        }
        history.append(hist)
        shown = [] if baseline else rows  # one group: its figures are the job's
        out.line(digits.epoch_line(epoch, args.epochs, hist["loss"], acc, shown, train_s))

    train_time = time.perf_counter() - train_start
    stats = {} if baseline else optimizer.stats()
    # every group leader's counters (staleness differs by group), in group order
    mine_stats = dict(stats, group=gid, straggler_sleep_s=slow.slept) if leader else None
    leaders = sorted(
        (r for r in hvd.allgather_object(mine_stats, name="digits.stats") if r is not None),
        key=lambda r: r["group"],
    )
    if rank == 0:
        run = dict(size=size, ngroups=ngroups, steps=steps, sync_desc=sync_desc, stats=stats)
        run.update(leaders=leaders, test_samples=len(y_te))
        times = dict(start=start, train_start=train_start, train_time=train_time)
        digits.report(out, args, history, run, times)
    if baseline:
        hvd.shutdown()
    else:
        hps.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
