"""The strategy flags the examples share: ``--sync``, ``--mode``, ``--period``, ``--alpha``,
``--outer-lr``, ``--outer-momentum``, ``--group-size``, ``--wire``, ``--max-staleness``,
``--min-period``, ``--max-period``, ``--quorum``, ``--grace``; and the strategy they describe."""

from __future__ import annotations

import argparse

import hvd_ps

#: ``horovod`` means no PS at all: Horovod allreduce over every rank, every step (a baseline)
STRATEGIES = ("gradient_push", "model_average", "easgd", "diloco", "horovod")
DEFAULT_PERIOD = {"gradient_push": 1, "model_average": 4, "easgd": 4, "diloco": 8, "horovod": 1}


def add(p: argparse.ArgumentParser, outer_momentum: float = 0.9, outer_lr: float = 0.7) -> None:
    p.add_argument("--sync", choices=STRATEGIES, default="easgd", help="strategy (default easgd)")
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument(
        "--period",
        type=_period,
        default=None,
        help="steps between PS exchanges (default: 4 easgd and model_average, 8 diloco, "
        "1 gradient_push), or 'auto' (async easgd and diloco: each group's own, from the "
        "groups' paces, between --min-period and --max-period)",
    )
    p.add_argument("--min-period", type=int, default=None, help="--period auto: fewest steps")
    p.add_argument(
        "--max-period",
        type=int,
        default=None,
        help="--period auto: most steps, the fastest group's (default: the strategy's period)",
    )
    p.add_argument("--alpha", type=float, default=None, help="EASGD alpha (default 0.9 / groups)")
    p.add_argument(
        "--outer-lr",
        type=float,
        default=outer_lr,
        help=f"DiLoCo outer learning rate (default {outer_lr})",
    )
    p.add_argument(
        "--outer-momentum",
        type=float,
        default=outer_momentum,
        help=f"DiLoCo outer (Nesterov) momentum (default {outer_momentum})",
    )
    p.add_argument("--group-size", type=int, default=None, help="ranks per group (default: host)")
    p.add_argument(
        "--wire",
        choices=("float32", "float16", "int8", "int4"),
        default=None,
        help="the PS wire (default: HVD_PS_WIRE_DTYPE, else float32); int8 and int4 send "
        "blockwise scaled codes with error feedback",
    )
    p.add_argument(
        "--max-staleness",
        type=int,
        default=None,
        help="async: the most exchanges a group may run ahead of the slowest live one "
        "(default: no bound)",
    )
    p.add_argument(
        "--quorum",
        type=int,
        default=None,
        help="sync, --wire int8 or int4: the groups a round needs to close (default: all)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="--quorum: seconds a round waits for the other groups once it has its quorum "
        "(default: a tenth of the recent interval between rounds)",
    )


def _period(text: str):
    """``--period``: a number of steps, or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of steps or 'auto', got {text!r}") from None


def finish(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the defaults that depend on other flags."""
    if args.period is None:
        args.period = DEFAULT_PERIOD[args.sync]
    if args.period == "auto" and args.max_period is None:
        args.max_period = DEFAULT_PERIOD[args.sync]
    return args


def make_strategy(args: argparse.Namespace) -> hvd_ps.Strategy:
    """The hvd_ps strategy the flags describe (not for ``--sync horovod``)."""
    bound = {} if args.max_staleness is None else {"max_staleness": args.max_staleness}
    for name in ("min_period", "max_period", "quorum", "grace"):  # (refused by name if amiss)
        if getattr(args, name) is not None:
            bound[name] = getattr(args, name)
    if args.sync == "gradient_push":
        return hvd_ps.GradientPush(mode=args.mode, **bound)
    if args.sync == "model_average":  # (it has no async mode: a bound is refused by name)
        return hvd_ps.ModelAverage(period=args.period, mode=args.mode, **bound)
    if args.sync == "easgd":
        return hvd_ps.EASGD(period=args.period, alpha=args.alpha, mode=args.mode, **bound)
    if args.sync == "diloco":
        return hvd_ps.DiLoCo(
            period=args.period,
            outer_lr=args.outer_lr,
            momentum=args.outer_momentum,
            mode=args.mode,
            **bound,
        )
    raise ValueError(f"--sync {args.sync} has no hvd_ps strategy")


def make_trainer(args: argparse.Namespace, params, optim: dict):
    """(trainer, description): Horovod's own trainer for ``--sync horovod``, else hvd_ps's.

    Broadcasts the initial parameters first, so every rank (and the PS) starts the same.
    """
    import horovod.mxnet as hvd

    if args.sync == "horovod":
        hvd.broadcast_parameters(params, root_rank=0)
        return hvd.DistributedTrainer(params, "sgd", optim), "Horovod allreduce over all ranks"
    hvd_ps.broadcast_parameters(params)
    sync = make_strategy(args)
    trainer = hvd_ps.DistributedTrainer(params, "sgd", optim, sync=sync, wire=args.wire)
    return trainer, describe(args, sync)


def describe(args: argparse.Namespace, sync: hvd_ps.Strategy) -> str:
    """The strategy as the examples print it (after ``hvd_ps.init``)."""
    desc = repr(sync)
    if isinstance(sync, hvd_ps.EASGD) and sync.alpha is None:  # say what the default became
        groups = hvd_ps.total_groups()  # of every job sharing the tier
        desc += f", alpha = 0.9 / {groups} groups = {sync.alpha_for(groups):g}"
    if args.wire is not None:
        desc += f", wire {args.wire}"
    return desc
