"""How groups meet at the PS tier: the math of each strategy, in one place.

Notation: ``G`` groups; ``x`` the parameters of a group (identical on its members, flattened
into fused buffers, per dtype and at most ``HVD_PS_BUCKET_MB`` each); the leader acts at every
step ``t`` with ``t % period == 0``, after the group's local update; ``c`` / ``w`` live on the
PS. A strategy's leader-side step (:meth:`Strategy.exchange`) runs on flat buffers with the
fused op (one pass per buffer); its server side is one of the named updaters of
:mod:`hvd_ps.server`.

================  ==========================  ==========================  ======================
strategy          leader pushes               server does                 leader then sets
================  ==========================  ==========================  ======================
GradientPush      group-mean gradient ``g``   optimizer on ``w`` (sync:   ``x = w``
                  (scaled by 1/batch)         mean of the round's ``g``)
ModelAverage      ``x``                       ``w = sum of the round``    ``x = w / G``
EASGD             ``d = alpha (x - c)``,      ``c += d``                  ``x -= d``
                  after pulling ``c``
DiLoCo            ``D = x_start - x``         ``v = m v + D'``,           ``x = x_start = w``
                                              ``w -= lr (D' + m v)``
                                              (``D'``: round mean / push)
================  ==========================  ==========================  ======================

Overlap (``overlap=tau``, ModelAverage, EASGD and DiLoCo; ``0 <= tau < period``): with
``tau >= 1`` the leader starts the exchange at step ``t`` from a snapshot ``x_t``
(:meth:`Strategy.launch`) and applies it at the end of step ``t + tau``
(:meth:`Strategy.apply`), the group training on meanwhile:

* ModelAverage: ``x = mean_g(x_{g,t}) + (x_{t+tau} - x_t)``
* EASGD: ``d = alpha (x_t - c)`` with ``c`` pulled at ``t``; servers ``c += d``;
  ``x = x_{t+tau} - d``
* DiLoCo: ``D = x_start - x_t``; the servers' outer step gives ``w``;
  ``x = w + (x_{t+tau} - x_t)``, ``x_start = w``

``tau = 0`` is the blocking exchange above, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .errors import ConfigError

MODES = ("sync", "async")


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(name: str, value: Any, low: float, high: float, open_low: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    ok = (low < value if open_low else low <= value) and value < high
    if not ok:
        lo = "(" if open_low else "["
        raise ConfigError(f"{name} must be in {lo}{low}, {high}), got {value!r}")
    return float(value)


def _overlap(value: Any, period: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < period:
        raise ConfigError(
            f"overlap must be an integer with 0 <= overlap < period ({period}), got {value!r}"
        )
    return value


def _fresh(b: Bucket, dtype: Optional[str]) -> Any:
    """A flat array of its own for a bucket (set-up only: not one of the buffer's pool)."""
    import mxnet as mx

    return mx.nd.zeros((b.params.size,), dtype=dtype or b.params.dtype)


def _mode(value: Any, allowed: Tuple[str, ...] = MODES) -> str:
    if value not in allowed:
        raise ConfigError(f"mode must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


@dataclass
class Bucket:
    """One fused buffer of a trainer's parameters (one dtype), with its PS key and scratch."""

    params: Any  # FusedBuffer over the parameters
    grads: Any  # FusedBuffer over their gradients
    key: int = -1
    out: Any = None  # flat buffer pushed (wire dtype)
    pulled: Any = None  # flat buffer pulled (wire dtype)
    start: Any = None  # DiLoCo's x_start (parameter dtype)
    snap: Any = None  # overlap: the snapshot x_t (parameter dtype), allocated once
    snap_buf: Any = None  # FusedBuffer([snap]): the fused op on the snapshot
    start_buf: Any = None  # FusedBuffer([start]) (DiLoCo with overlap)


class Strategy:
    """Base class: a period, a mode, and the leader-side math of one exchange."""

    name = "strategy"
    period = 1
    mode = "sync"
    #: whether the trainer's own optimizer updates the parameters every step
    local_update = True
    #: steps between starting an exchange and applying it (0: blocking)
    overlap = 0

    def validate(self, num_groups: int) -> None:
        """Check arguments that depend on the number of groups."""

    def server_updater(self, num_groups: int) -> Tuple[str, Dict[str, Any]]:
        """Name and parameters of the server updater for this strategy's keys."""
        raise NotImplementedError

    def initial(self, b: Bucket, num_groups: int, wire: Optional[str]) -> Any:
        """The key's initial value on the PS (default: the parameters)."""
        return b.params.pack(dtype=wire, out=_fresh(b, wire))

    def exchange(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        """The leader's PS exchange for one bucket; leaves the new ``x`` in the parameters.

        Only queues work on MXNet's engine (the trainer waits once for every bucket), so what
        follows a pull must read it through engine operations (the fused op), not numpy.
        """
        raise NotImplementedError

    def launch(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        """Overlap: start the exchange from the snapshot ``b.snap`` (already packed by the
        trainer) without waiting; the parameters are not touched. Only queues engine work."""
        raise NotImplementedError

    def apply(self, b: Bucket, num_groups: int) -> None:
        """Overlap: apply the exchange started by :meth:`launch` to the current parameters
        (the trainer has waited for ``b.pulled``)."""
        raise NotImplementedError

    def global_scale(self, num_groups: int) -> float:
        """``pull_global`` sets ``x = global_scale * (value on the PS)``."""
        return 1.0

    def describe(self) -> str:
        return repr(self)


class GradientPush(Strategy):
    """The paper's baseline: every step, each group's leader pushes the group-mean gradient and
    the servers run the optimizer on the PS copy ``w`` of the weights; groups then set
    ``x = w``. In sync mode a server applies one update with the mean of the G gradients of a
    round; in async mode each push updates ``w`` as it arrives. The trainer's optimizer and its
    ``optimizer_params`` (numbers only) run on the servers; no local update happens.

    Example::

        trainer = hvd_ps.DistributedTrainer(params, 'sgd', {'learning_rate': 0.1},
                                            sync=hvd_ps.GradientPush(mode='async'))
    """

    name = "GradientPush"
    local_update = False

    def __init__(self, mode: str = "sync") -> None:
        self.mode = _mode(mode)
        self.period = 1
        self.optimizer: Tuple[str, Dict[str, Any]] = ("sgd", {})

    def __repr__(self) -> str:
        return f"GradientPush(mode={self.mode!r})"

    def server_updater(self, num_groups: int) -> Tuple[str, Dict[str, Any]]:
        name, args = self.optimizer
        scale = 1.0 / num_groups if self.mode == "sync" else 1.0
        return "optimizer", {"name": name, "scale": scale, "args": args}

    def exchange(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        # b.out already holds the scaled group-mean gradient (packed by the trainer)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled)


class ModelAverage(Strategy):
    """Hierarchical local SGD: every ``period`` steps the groups' parameters are averaged,
    ``x = (1/G) sum_g x_g`` (sync only).

    ``overlap=tau`` (``0 <= tau < period``) starts the exchange from a snapshot ``x_t`` and
    applies it ``tau`` steps later: ``x = mean_g(x_{g,t}) + (x_{t+tau} - x_t)``.

    Example::

        sync = hvd_ps.ModelAverage(period=8)
        sync = hvd_ps.ModelAverage(period=16, overlap=4)  # the exchange hides behind 4 steps
    """

    name = "ModelAverage"

    def __init__(self, period: int = 1, mode: str = "sync", overlap: int = 0) -> None:
        self.period = _int("period", period)
        self.mode = _mode(mode, ("sync",))
        self.overlap = _overlap(overlap, self.period)

    def __repr__(self) -> str:
        return f"ModelAverage(period={self.period}, overlap={self.overlap})"

    def server_updater(self, num_groups: int) -> Tuple[str, Dict[str, Any]]:
        return "assign", {}

    def initial(self, b: Bucket, num_groups: int, wire: Optional[str]) -> Any:
        # The PS holds the sum of a round; start as if every group had pushed x0.
        flat = b.params.pack(dtype=wire, out=_fresh(b, wire))
        return b.params.pack_axpby(flat, float(num_groups), 0.0, dtype=wire, out=flat)

    def exchange(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        b.params.pack(dtype=wire, out=b.out)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled, alpha=1.0 / num_groups)

    def launch(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        b.snap_buf.pack(dtype=wire, out=b.out)  # push x_t
        client.exchange(b.key, b.out, b.pulled, wait=False)

    def apply(self, b: Bucket, num_groups: int) -> None:
        b.snap_buf.unpack(b.pulled, alpha=1.0 / num_groups, beta=-1.0)  # mean - x_t
        b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += mean - x_t

    def global_scale(self, num_groups: int) -> float:
        return 1.0 / num_groups


class EASGD(Strategy):
    """Elastic averaging SGD (Zhang, Choromanska, LeCun 2015). Every ``period`` steps the
    leader pulls the centre ``c``, computes ``d = alpha (x - c)``, sets ``x -= d`` and pushes
    ``d``; the servers add it, ``c += d``. ``alpha`` defaults to ``0.9 / G`` (``beta = G alpha
    = 0.9``); sync mode needs ``G alpha < 1`` to be stable and rejects anything else.

    ``overlap=tau`` (``0 <= tau < period``) computes and pushes ``d = alpha (x_t - c)`` from a
    snapshot ``x_t`` and subtracts it ``tau`` steps later: ``x = x_{t+tau} - d``.

    Example::

        sync = hvd_ps.EASGD(period=4, alpha=0.2, mode='async')
        sync = hvd_ps.EASGD(period=16, overlap=8)
    """

    name = "EASGD"

    def __init__(
        self,
        period: int = 4,
        alpha: Optional[float] = None,
        mode: str = "sync",
        overlap: int = 0,
    ) -> None:
        self.period = _int("period", period)
        self.alpha = None if alpha is None else _float("alpha", alpha, 0.0, 1.0)
        self.mode = _mode(mode)
        self.overlap = _overlap(overlap, self.period)

    def __repr__(self) -> str:
        return (
            f"EASGD(period={self.period}, alpha={self.alpha!r}, mode={self.mode!r}, "
            f"overlap={self.overlap})"
        )

    def alpha_for(self, num_groups: int) -> float:
        return 0.9 / num_groups if self.alpha is None else self.alpha

    def validate(self, num_groups: int) -> None:
        a = self.alpha_for(num_groups)
        if self.mode == "sync" and num_groups * a >= 1.0:
            raise ConfigError(
                f"EASGD alpha={a:g} with {num_groups} groups gives beta = G*alpha = "
                f"{num_groups * a:g} >= 1, which is unstable in sync mode; use alpha < "
                f"{1.0 / num_groups:g} (0.9/G = {0.9 / num_groups:g} is typical)"
            )

    def server_updater(self, num_groups: int) -> Tuple[str, Dict[str, Any]]:
        return "add", {}

    def exchange(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        # Pull c. In sync mode this pull is ordered after our previous push, whose round
        # closes only when every group pushed, so c is the centre after the last round.
        client.exchange(b.key, None, b.pulled, wait=False)
        b.params.elastic(b.pulled, self.alpha_for(num_groups), out=b.out, dtype=wire)
        client.push(b.key, b.out)

    def launch(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        # pull c (after our previous push, as in exchange()), d = alpha (x_t - c), push d;
        # all of it on the snapshot, so the parameters' next update never waits for the pull
        a = self.alpha_for(num_groups)
        client.exchange(b.key, None, b.pulled, wait=False)
        b.snap_buf.pack_axpby(b.pulled, a, -a, dtype=wire, out=b.out)
        client.push(b.key, b.out)

    def apply(self, b: Bucket, num_groups: int) -> None:
        b.params.unpack(b.out, alpha=-1.0, beta=1.0)  # x -= d, d as pushed (after any cast)


class DiLoCo(Strategy):
    """DiLoCo (Douillard et al. 2023): groups take ``period`` inner steps, then push the
    pseudo-gradient ``D = x_start - x``; the servers run outer Nesterov SGD on ``w`` (PyTorch's
    ``SGD(nesterov=True)`` / MXNet's NAG, no weight decay): ``v = m v + D'; w -= lr (D' + m v)``
    where ``D'`` is the round's mean (sync) or the single push (async). Groups then restart
    from ``x = x_start = w``.

    ``overlap=tau`` (``0 <= tau < period``) pushes ``D = x_start - x_t`` from a snapshot and
    applies the servers' ``w`` ``tau`` steps later: ``x = w + (x_{t+tau} - x_t)``,
    ``x_start = w``.

    Example::

        sync = hvd_ps.DiLoCo(period=16, outer_lr=0.7, momentum=0.9)
        sync = hvd_ps.DiLoCo(period=64, overlap=16)
    """

    name = "DiLoCo"

    def __init__(
        self,
        period: int = 16,
        outer_lr: float = 0.7,
        momentum: float = 0.9,
        nesterov: bool = True,
        mode: str = "sync",
        overlap: int = 0,
    ) -> None:
        self.period = _int("period", period)
        self.outer_lr = _float("outer_lr", outer_lr, 0.0, float("inf"))
        self.momentum = _float("momentum", momentum, 0.0, 1.0, open_low=False)
        if not isinstance(nesterov, bool):
            raise ConfigError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = nesterov
        self.mode = _mode(mode)
        self.overlap = _overlap(overlap, self.period)

    def __repr__(self) -> str:
        return (
            f"DiLoCo(period={self.period}, outer_lr={self.outer_lr!r}, "
            f"momentum={self.momentum!r}, nesterov={self.nesterov}, mode={self.mode!r}, "
            f"overlap={self.overlap})"
        )

    def server_updater(self, num_groups: int) -> Tuple[str, Dict[str, Any]]:
        scale = 1.0 / num_groups if self.mode == "sync" else 1.0
        return "nesterov", {
            "lr": self.outer_lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "scale": scale,
        }

    def initial(self, b: Bucket, num_groups: int, wire: Optional[str]) -> Any:
        b.start = b.params.pack(out=_fresh(b, None))  # x_start, in the parameters' dtype
        return super().initial(b, num_groups, wire)

    def exchange(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        b.params.pack_axpby(b.start, -1.0, 1.0, dtype=wire, out=b.out)  # D = x_start - x
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled)  # x = w
        b.params.pack(out=b.start)  # x_start = w

    def launch(self, b: Bucket, client: Any, num_groups: int, wire: Optional[str]) -> None:
        b.snap_buf.pack_axpby(b.start, -1.0, 1.0, dtype=wire, out=b.out)  # D = x_start - x_t
        client.exchange(b.key, b.out, b.pulled, wait=False)

    def apply(self, b: Bucket, num_groups: int) -> None:
        b.snap_buf.unpack(b.pulled, alpha=1.0, beta=-1.0)  # w - x_t
        b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += w - x_t
        b.start_buf.unpack(b.pulled)  # x_start = w
