"""What the two digits examples share: ``train_digits.py`` (MXNet Gluon) and
``train_digits_torch.py`` (PyTorch) take the same flags, train on the same shards, print the
same lines and write the same ``--json`` and ``--plot``. Imports no training framework.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List, Optional

import console  # examples/console.py
import numpy as np
import straggler  # examples/straggler.py
import strategy_flags  # examples/strategy_flags.py


def parse_args(description: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    strategy_flags.add(p, outer_momentum=0.5, outer_lr=0.5)
    straggler.add(p)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of the local SGD")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum of the local SGD")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--hidden", type=str, default="128,64", help="hidden layer widths")
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=str, default=None, help="write a PNG of loss/accuracy here")
    p.add_argument("--json", type=str, default=None, help="write the final metrics here")
    p.add_argument(
        "--progress",
        choices=console.MODES,
        default="auto",
        help="bar: a tqdm bar redrawn in place; lines: whole lines only (what mpirun's output "
        "tagging needs); auto (default): bar on a terminal not behind mpirun/horovodrun",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (same as --progress none)")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save the whole job here (train_digits.hvdps) and resume from it when it exists",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="steps between checkpoints (default: the end of every epoch)",
    )
    args = p.parse_args(argv)
    strategy_flags.finish(args)
    straggler.check(p, args)
    if args.checkpoint_dir and args.sync == "horovod":
        p.error("--checkpoint-dir needs an hvd_ps strategy (--sync horovod has no PS to save)")
    if args.checkpoint_every < 0:
        p.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    return args


def load_data(seed: int, test_size: float, rank: int, size: int):
    """(x_shard, y_shard, x_test, y_test): this rank's equal-size shard, the shared test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    order = np.random.RandomState(seed).permutation(len(x_tr))
    per = len(x_tr) // size  # equal shards: every rank takes the same number of steps
    mine = order[rank * per : (rank + 1) * per]
    return x_tr[mine], y_tr[mine].astype(np.float32), x_te, y_te.astype(np.int64)


def widths(hidden: str) -> List[int]:
    """The MLP's layer widths: 64 inputs, the hidden layers, 10 classes."""
    return [64] + [int(w) for w in hidden.split(",") if w] + [10]


def plot(path: str, history: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (mean over ranks)")
    ax1.set_yscale("log")
    ax1.grid(True, alpha=0.3)
    ax2.plot(epochs, [100 * h["test_acc"] for h in history], marker="o", color="C1")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy of the global model (%)")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def group_figures(hvd, leader: bool, gid: int, loss: float, acc: float) -> list:
    """[(group id, loss, accuracy of the group's own model)] in group order, from every leader.

    One small object per rank through Horovod's allgather (bounded like every hvd_ps wait:
    hvd_ps.init sets Horovod's stall shutdown time to HVD_PS_TIMEOUT)."""
    rows = hvd.allgather_object((gid, loss, acc) if leader else None, name="digits.groups")
    return sorted(r for r in rows if r is not None)


def epoch_line(epoch: int, epochs: int, loss: float, acc: float, groups: list, secs: float):
    """One whole line per epoch: the job's figures, then each group's, in group order."""
    width = len(str(epochs))
    text = f"epoch {epoch:{width}d}/{epochs}  loss {loss:.4f}  global model {100 * acc:5.2f}%"
    for gid, gloss, gacc in groups:
        text += f"  | group {gid}: loss {gloss:.4f} acc {100 * gacc:5.2f}%"
    return f"{text}  | {secs:.2f} s"


def report(
    out: Any,
    args: argparse.Namespace,
    history: List[Dict[str, Any]],
    run: Dict[str, Any],
    times: Dict[str, float],
) -> None:
    """Rank 0, at the end: the final line, the ``--json`` file and the ``--plot`` figure.

    ``run``: ``size``, ``ngroups``, ``steps``, ``sync_desc``, ``stats`` (this trainer's),
    ``leaders`` (every group leader's stats); ``times``: ``start``, ``train_start``,
    ``train_time`` (``time.perf_counter`` values and seconds)."""
    start, train_start, train_time = times["start"], times["train_start"], times["train_time"]
    final = history[-1]["test_acc"] if history else float("nan")
    out.line(
        f"final test accuracy (global model): {100 * final:.2f}%  "
        f"(training {train_time:.1f} s, total {time.perf_counter() - start:.1f} s)"
    )
    warning = console.chance_warning(final, 10, run["test_samples"])
    if warning:
        out.line(warning)
    if args.json:
        result = {
            "sync": args.sync,
            "strategy": run["sync_desc"],
            "mode": args.mode,
            "period": args.period,
            "ranks": run["size"],
            "groups": run["ngroups"],
            "epochs": args.epochs,
            "steps_per_epoch": run["steps"],
            "final_test_accuracy": final,
            "best_test_accuracy": max(h["test_acc"] for h in history),
            "setup_s": train_start - start,
            "train_time_s": train_time,
            "total_time_s": time.perf_counter() - start,
            "history": history,
            "stats": run["stats"],
            "group_stats": run["leaders"],
            "args": vars(args),
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        title = f"digits, {run['size']} ranks / {run['ngroups']} groups: {run['sync_desc']}"
        plot(args.plot, history, title)
        out.line(f"plot written to {args.plot}")
