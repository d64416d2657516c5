"""The leader's side of each strategy, bound to one job: the math of an exchange on flat buffers.

:meth:`hvd_ps.train.core.strategies.Strategy.bind` makes one :class:`Exchange` per trainer at its
first step, with the number of groups ``G`` (every job on the tier) and the wire dtype fixed from
then on. An exchange names the servers' rule for its keys (:attr:`Exchange.rule`, a record of
:mod:`hvd_ps.ps.protocol`) and runs the leader's part of the table in
:mod:`hvd_ps.train.core.strategies` on one :class:`Bucket` at a time (:func:`plan_buckets` splits
the parameters into buckets), with the fused op (one pass per buffer). State a strategy keeps per
bucket between exchanges (DiLoCo's ``x_start``) lives here, in the trainer's exchange, never on the
strategy value the user made.

Every method only queues work on MXNet's engine; the trainer's schedule
(:mod:`hvd_ps.train.core.schedule`) waits once for all buckets, so what follows a pull reads it
through engine operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from ...errors import ConfigError
from ...ps import protocol
from .strategies import EASGD, DiLoCo, GradientPush, ModelAverage, Strategy


@dataclass
class Bucket:
    """One fused buffer of a trainer's parameters (one dtype), with its PS key and scratch."""

    index: int  # position among the trainer's buckets
    params: Any  # FusedBuffer over the parameters
    grads: Any  # FusedBuffer over their gradients
    key: int = -1
    out: Any = None  # flat buffer pushed (wire dtype)
    pulled: Any = None  # flat buffer pulled (wire dtype)
    snap: Any = None  # overlap: the snapshot x_t (parameter dtype), allocated once
    snap_buf: Any = None  # FusedBuffer([snap]): the fused op on the snapshot
    names: List[str] = field(default_factory=list)  # the parameters' names, in layout order


def plan_buckets(arrays: Sequence[mx.nd.NDArray], max_bytes: int) -> List[List[int]]:
    """Split ``arrays`` into fused buffers: one dtype per buffer, each at most ``max_bytes``.

    Returns lists of indices into ``arrays``, in order within each dtype (first-seen dtype
    first). An array larger than ``max_bytes`` gets a buffer of its own; ``max_bytes <= 0``
    gives one buffer per dtype. Several buffers let their PS transfers overlap.

    Example::

        plan_buckets([a32_10MB, a32_10MB, a16_1MB], 16 << 20)  # -> [[0], [1], [2]]
    """
    by_dtype: dict = {}
    for i, a in enumerate(arrays):
        by_dtype.setdefault(np.dtype(a.dtype).name, []).append(i)
    out: List[List[int]] = []
    for idx in by_dtype.values():
        current: List[int] = []
        size = 0
        for i in idx:
            nbytes = int(np.prod(arrays[i].shape)) * np.dtype(arrays[i].dtype).itemsize
            if current and max_bytes > 0 and size + nbytes > max_bytes:
                out.append(current)
                current, size = [], 0
            current.append(i)
            size += nbytes
        if current:
            out.append(current)
    return out


def _fresh(b: Bucket, dtype: Optional[str]) -> Any:
    """A flat array of its own for a bucket (set-up only: not one of the buffer's pool)."""
    return mx.nd.zeros((b.params.size,), dtype=dtype or b.params.dtype)


class Exchange:
    """A strategy bound to a job: ``G`` groups, PS traffic in ``wire`` (None: as the params)."""

    def __init__(self, strategy: Strategy, num_groups: int, wire: Optional[str]) -> None:
        self.strategy = strategy
        self.groups = num_groups
        self.wire = wire
        #: the servers' rule for every key of the trainer
        self.rule: protocol.Rule = protocol.Assign()
        #: ``pull_global`` sets ``x = global_scale * (value on the PS)``
        self.global_scale = 1.0

    def initial(self, b: Bucket) -> Any:
        """The key's initial value on the PS (default: the parameters)."""
        return b.params.pack(dtype=self.wire, out=_fresh(b, self.wire))

    def rejoin(self, b: Bucket) -> None:
        """A group that rejoins the tier: ``x = global_scale * (the key's value)``, which the
        leader pulled into ``b.pulled`` (the centre, the servers' weights)."""
        b.params.unpack(b.pulled, alpha=self.global_scale)

    def exchange(self, b: Bucket, client: Any) -> None:
        """The blocking exchange of one bucket; leaves the new ``x`` in the parameters."""
        raise NotImplementedError

    def launch(self, b: Bucket, client: Any) -> None:
        """Overlap: start the exchange from the snapshot ``b.snap`` (packed by the schedule)
        without waiting; the parameters are not touched."""
        raise NotImplementedError

    def apply(self, b: Bucket) -> None:
        """Overlap: apply the exchange :meth:`launch` started to the current parameters (the
        schedule has waited for ``b.pulled``)."""
        raise NotImplementedError


#: what async GradientPush's delayed Nesterov takes of an ``sgd``/``nag`` optimizer's arguments
#: (MXNet's defaults otherwise); ``lazy_update`` and ``multi_precision`` change nothing for the
#: dense float buffers the servers hold
DELAYED_SGD_ARGS = ("learning_rate", "momentum", "wd", "rescale_grad", "clip_gradient")
_NO_EFFECT = ("lazy_update", "multi_precision")


def async_push_rule(name: str, args: Dict[str, Any], groups: int) -> protocol.Rule:
    """The servers' rule of async GradientPush: each push is ``1/G`` of a sync round.

    MXNet's ``sgd`` and ``nag`` (one momentum buffer) become delayed Nesterov SGD, as async
    DiLoCo's outer step: the push's own gradient term at once with ``lr / G``, the momentum
    once every ``G`` pushes. Other optimizers run on every push with ``lr / G`` (their state
    updated per push)."""
    if name not in ("sgd", "nag"):
        return protocol.Optimizer(name, dict(args), lr_scale=1.0 / groups)
    unknown = sorted(set(args) - set(DELAYED_SGD_ARGS) - set(_NO_EFFECT))
    if unknown:
        raise ConfigError(
            f"optimizer_params {', '.join(unknown)}: async GradientPush runs {name!r} on the "
            f"servers as delayed Nesterov SGD, which takes {', '.join(DELAYED_SGD_ARGS)}"
        )
    clip = args.get("clip_gradient")
    return protocol.Nesterov(
        lr=float(args.get("learning_rate", 0.01)),  # MXNet's default for sgd and nag
        momentum=float(args.get("momentum", 0.0)),
        nesterov=True,
        scale=float(args.get("rescale_grad", 1.0)) / groups,
        delay=groups,
        wd=float(args.get("wd", 0.0)),
        clip=None if clip is None or clip < 0 else float(clip),
    )


class GradientPushExchange(Exchange):
    def __init__(self, s: GradientPush, groups: int, wire: Optional[str], optimizer: Any) -> None:
        super().__init__(s, groups, wire)
        if optimizer is None:
            raise ConfigError("GradientPush needs the trainer's optimizer (name, numbers)")
        name, args = optimizer
        if s.mode == "sync":  # one step with the mean of a round's G gradients
            self.rule = protocol.Optimizer(name, dict(args), protocol.round_scale(s.mode, groups))
        else:
            self.rule = async_push_rule(name, dict(args), groups)

    def exchange(self, b: Bucket, client: Any) -> None:
        # b.out already holds the scaled group-mean gradient (packed by the trainer)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled)


class ModelAverageExchange(Exchange):
    def __init__(self, s: ModelAverage, groups: int, wire: Optional[str]) -> None:
        super().__init__(s, groups, wire)
        self.rule = protocol.Assign()  # the servers keep the sum of a round
        self.global_scale = 1.0 / groups

    def initial(self, b: Bucket) -> Any:
        # The PS holds the sum of a round; start as if every group had pushed x0.
        flat = super().initial(b)
        return b.params.pack_axpby(flat, float(self.groups), 0.0, dtype=self.wire, out=flat)

    def exchange(self, b: Bucket, client: Any) -> None:
        b.params.pack(dtype=self.wire, out=b.out)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled, alpha=1.0 / self.groups)

    def launch(self, b: Bucket, client: Any) -> None:
        b.snap_buf.pack(dtype=self.wire, out=b.out)  # push x_t
        client.exchange(b.key, b.out, b.pulled, wait=False)

    def apply(self, b: Bucket) -> None:
        b.snap_buf.unpack(b.pulled, alpha=1.0 / self.groups, beta=-1.0)  # mean - x_t
        b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += mean - x_t


class EASGDExchange(Exchange):
    def __init__(self, s: EASGD, groups: int, wire: Optional[str]) -> None:
        super().__init__(s, groups, wire)
        self.rule = protocol.Add()  # c += d
        self.alpha = s.alpha_for(groups)

    def exchange(self, b: Bucket, client: Any) -> None:
        # Pull c. In sync mode this pull is ordered after our previous push, whose round
        # closes only when every group pushed, so c is the centre after the last round.
        client.exchange(b.key, None, b.pulled, wait=False)
        b.params.elastic(b.pulled, self.alpha, out=b.out, dtype=self.wire)
        client.push(b.key, b.out)

    def launch(self, b: Bucket, client: Any) -> None:
        # pull c (after our previous push, as in exchange()), d = alpha (x_t - c), push d;
        # all of it on the snapshot, so the parameters' next update never waits for the pull
        a = self.alpha
        client.exchange(b.key, None, b.pulled, wait=False)
        b.snap_buf.pack_axpby(b.pulled, a, -a, dtype=self.wire, out=b.out)
        client.push(b.key, b.out)

    def apply(self, b: Bucket) -> None:
        b.params.unpack(b.out, alpha=-1.0, beta=1.0)  # x -= d, d as pushed (after any cast)


class DiLoCoExchange(Exchange):
    def __init__(self, s: DiLoCo, groups: int, wire: Optional[str]) -> None:
        super().__init__(s, groups, wire)
        self.rule = protocol.Nesterov(
            lr=s.outer_lr,
            momentum=s.momentum,
            nesterov=s.nesterov,
            # sync: the mean of a round's G pushes; async: each push is 1/G of a round and
            # the momentum is applied once every G pushes (delayed Nesterov)
            scale=1.0 / groups,
            delay=1 if s.mode == "sync" else groups,
        )
        #: per bucket: x_start (the parameters' dtype) and the fused op over it
        self.start: Dict[int, Tuple[Any, Any]] = {}

    def initial(self, b: Bucket) -> Any:
        from .fusion import FusedBuffer

        start = b.params.pack(out=_fresh(b, None))  # x_start = x0
        self.start[b.index] = (start, FusedBuffer([start]))
        return super().initial(b)

    def starts(self) -> List[Any]:
        """Every bucket's ``x_start``, in bucket order."""
        return [self.start[i][0] for i in sorted(self.start)]

    def rejoin(self, b: Bucket) -> None:
        super().rejoin(b)  # x = w
        self.start[b.index][1].unpack(b.pulled)  # x_start = w

    def exchange(self, b: Bucket, client: Any) -> None:
        start, _ = self.start[b.index]
        b.params.pack_axpby(start, -1.0, 1.0, dtype=self.wire, out=b.out)  # D = x_start - x
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled)  # x = w
        b.params.pack(out=start)  # x_start = w

    def launch(self, b: Bucket, client: Any) -> None:
        start, _ = self.start[b.index]
        b.snap_buf.pack_axpby(start, -1.0, 1.0, dtype=self.wire, out=b.out)  # D = x_start - x_t
        client.exchange(b.key, b.out, b.pulled, wait=False)

    def apply(self, b: Bucket) -> None:
        _, start_buf = self.start[b.index]
        b.snap_buf.unpack(b.pulled, alpha=1.0, beta=-1.0)  # w - x_t
        b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += w - x_t
        start_buf.unpack(b.pulled)  # x_start = w


def bind(
    strategy: Strategy,
    num_groups: int,
    wire: Optional[str],
    optimizer: Optional[Tuple[str, Dict[str, Any]]] = None,
) -> Exchange:
    """The exchange of ``strategy`` for this job (see :meth:`Strategy.bind`)."""
    if isinstance(strategy, GradientPush):
        return GradientPushExchange(strategy, num_groups, wire, optimizer)
    if isinstance(strategy, ModelAverage):
        return ModelAverageExchange(strategy, num_groups, wire)
    if isinstance(strategy, EASGD):
        return EASGDExchange(strategy, num_groups, wire)
    if isinstance(strategy, DiLoCo):
        return DiLoCoExchange(strategy, num_groups, wire)
    raise ConfigError(f"sync: {strategy!r} is not one of hvd_ps's strategies")
