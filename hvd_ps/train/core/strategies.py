"""How groups meet at the PS tier: the strategies a user picks, as small immutable values.

Notation: ``G`` groups; ``x`` the parameters of a group (identical on its members, flattened
into fused buffers, per dtype and at most ``HVD_PS_BUCKET_MB`` each); the leader acts at every
step ``t`` with ``t % period == 0``, after the group's local update; ``c`` / ``w`` live on the
PS. A strategy here holds its arguments only (checked when it is made, compared across groups
by equality, shown by its ``repr``). At the trainer's first step it is bound to the job
(:meth:`Strategy.bind`: the number of groups ``G`` and the wire dtype) as an
:class:`hvd_ps.train.core.exchanges.Exchange`, which runs the leader's side of the table below on
flat buffers with the fused op and names the servers' side, a record of :mod:`hvd_ps.ps.protocol`.

================  ==========================  ==========================  ======================
strategy          leader pushes               server does                 leader then sets
================  ==========================  ==========================  ======================
GradientPush      group-mean gradient ``g``   optimizer on ``w``, one     ``x = w``
                  (scaled by 1/batch)         step with the round's mean
ModelAverage      ``x``                       ``w = sum of the round``    ``x = w / G``
EASGD             ``d = alpha (x - c)``,      ``c += d``                  ``x -= d``
                  after pulling ``c``
DiLoCo            ``D = x_start - x``         ``v = m v + D'``,           ``x = x_start = w``
                                              ``w -= lr (D' + m v)``
                                              (``D'``: the round's mean)
================  ==========================  ==========================  ======================

Async rules (``mode='async'``): the servers apply each push as it arrives, and **each push is
1/G of a sync round**, so ``G`` pushes move ``w`` as one sync round of them would and no rule
needs its hyperparameters divided by ``G``:

* DiLoCo (delayed Nesterov, after Async Local-SGD, arXiv 2401.09135): each push ``D`` moves
  ``w -= lr D / G`` at once and adds ``D / G`` to ``A``; every ``G``-th push also applies the
  momentum, once: ``v = m v + A; A = 0; w -= lr m v`` (Nesterov; heavy ball: ``w -= lr m
  v_old``). When the ``G`` pushes are equal this is the sync round's step exactly.
* GradientPush with MXNet's ``sgd`` or ``nag``: the same delayed Nesterov on the pushed
  gradient (``D = clip(g / G) + wd w``), so a stale gradient enters the momentum once, at
  ``1/G`` of a round, and heavy-ball ``sgd`` momentum becomes Nesterov (per-push momentum on
  stale gradients measured unstable). Other optimizers run on every push with the learning
  rate ``lr / G``, their state updated per push.
* EASGD: ``c += d`` per push, with ``alpha`` defaulting to ``0.9 / G`` (each push pulls the
  centre ``1/G`` of ``beta = 0.9``).

Overlap (``overlap=tau``, ModelAverage, EASGD and DiLoCo; ``0 <= tau < period``): with
``tau >= 1`` the leader starts the exchange at step ``t`` from a snapshot ``x_t``
(:meth:`hvd_ps.train.core.exchanges.Exchange.launch`) and applies it at the end of step ``t + tau``
(:meth:`hvd_ps.train.core.exchanges.Exchange.apply`), the group training on meanwhile:

* ModelAverage: ``x = mean_g(x_{g,t}) + (x_{t+tau} - x_t)``
* EASGD: ``d = alpha (x_t - c)`` with ``c`` pulled at ``t``; servers ``c += d``;
  ``x = x_{t+tau} - d``
* DiLoCo: ``D = x_start - x_t``; the servers' outer step gives ``w``;
  ``x = w + (x_{t+tau} - x_t)``, ``x_start = w``

``tau = 0`` is the blocking exchange above, unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Tuple, Type

from ...errors import ConfigError
from ...ps.protocol import number

if TYPE_CHECKING:  # the exchanges need MXNet; a strategy value does not
    from .exchanges import Exchange

MODES = ("sync", "async")


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _overlap(value: Any, period: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < period:
        raise ConfigError(
            f"overlap must be an integer with 0 <= overlap < period ({period}), got {value!r}"
        )
    return value


def _mode(strategy: Strategy) -> str:
    """``strategy.mode``, checked against the modes its class has."""
    value, allowed, owner = strategy.mode, strategy.modes, type(strategy).__name__
    if value not in allowed:
        msg = f"mode must be one of {', '.join(allowed)}, got {value!r}"
        others = [k.__name__ for k in _strategies() if value in k.modes and k.__name__ != owner]
        close = difflib.get_close_matches(str(value), allowed, n=1)
        if others:
            names = ", ".join(others[:-1]) + f" and {others[-1]}" if len(others) > 1 else others[0]
            msg += (
                f": {owner} has no {value} mode; {names} {'have' if len(others) > 1 else 'has'} one"
            )
        elif close:
            msg += f": did you mean {close[0]!r}?"
        raise ConfigError(msg)
    return str(value)


def _strategies() -> List[Type[Strategy]]:
    """Every strategy class, in the order they are defined."""
    return [k for k in Strategy.__subclasses__() if dataclasses.is_dataclass(k)]


class _CheckedArguments(type):
    """A strategy's arguments are checked by name before its constructor sees them: an unknown
    keyword is a :class:`ConfigError` naming the closest valid one, not a ``TypeError``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            listed = f"(its arguments: {', '.join(names)})"
            if len(args) > len(names):
                raise ConfigError(
                    f"{cls.__name__} takes at most {len(names)} arguments {listed}, "
                    f"got {len(args)} positional"
                )
            for key in kwargs:
                if key in names[: len(args)]:
                    raise ConfigError(f"{cls.__name__}: {key} given twice, by position and name")
                if key not in names:
                    close = difflib.get_close_matches(key, names, n=1)
                    hint = f": did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(f"{cls.__name__} has no argument {key!r}{hint} {listed}")
        return super().__call__(*args, **kwargs)


def _set(obj: Any, **values: Any) -> None:
    """Store checked (normalised) values on a frozen dataclass, in ``__post_init__``."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


class Strategy(metaclass=_CheckedArguments):
    """Base of the strategies: a period, a mode, an overlap, and how to bind to a job.

    Not a dataclass itself, so that each strategy (a frozen dataclass) declares its own
    arguments as fields in the order its constructor takes them; these class defaults stand
    for the ones a strategy does not take.
    """

    period = 1
    mode = "sync"
    overlap = 0
    #: the modes the strategy has
    modes: ClassVar[Tuple[str, ...]] = MODES
    #: whether the trainer's own optimizer updates the parameters every step
    local_update: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def validate(self, num_groups: int) -> None:
        """Check arguments that depend on the number of groups (all jobs on the tier)."""

    def bind(
        self,
        num_groups: int,
        wire: Optional[str],
        optimizer: Optional[Tuple[str, Dict[str, Any]]] = None,
    ) -> Exchange:
        """This strategy's exchange for a job of ``num_groups`` groups whose PS traffic is in
        ``wire`` (``None``: the parameters' dtype). ``optimizer`` is GradientPush's server
        optimizer (name, numeric arguments). Checks :meth:`validate` first."""
        from . import exchanges

        self.validate(num_groups)
        return exchanges.bind(self, num_groups, wire, optimizer)

    def describe(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class GradientPush(Strategy):
    """The paper's baseline: every step, each group's leader pushes the group-mean gradient and
    the servers run the optimizer on the PS copy ``w`` of the weights; groups then set
    ``x = w``. In sync mode a server applies one update with the mean of the G gradients of a
    round; in async mode each push updates ``w`` as it arrives as ``1/G`` of a sync round, so
    the sync hyperparameters carry over: ``sgd`` and ``nag`` run as delayed Nesterov (the
    gradient term at once with ``lr / G``, the momentum once every ``G`` pushes), other
    optimizers with ``lr / G`` per push.
    The trainer's optimizer and its ``optimizer_params`` (numbers only) run on the servers; no
    local update happens.

    Example::

        trainer = hvd_ps.DistributedTrainer(params, 'sgd', {'learning_rate': 0.1},
                                            sync=hvd_ps.GradientPush(mode='async'))
    """

    mode: str = "sync"
    local_update: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _set(self, mode=_mode(self))

    def __repr__(self) -> str:
        return f"GradientPush(mode={self.mode!r})"


@dataclass(frozen=True)
class ModelAverage(Strategy):
    """Hierarchical local SGD: every ``period`` steps the groups' parameters are averaged,
    ``x = (1/G) sum_g x_g`` (sync only).

    ``overlap=tau`` (``0 <= tau < period``) starts the exchange from a snapshot ``x_t`` and
    applies it ``tau`` steps later: ``x = mean_g(x_{g,t}) + (x_{t+tau} - x_t)``.

    Example::

        sync = hvd_ps.ModelAverage(period=8)
        sync = hvd_ps.ModelAverage(period=16, overlap=4)  # the exchange hides behind 4 steps
    """

    period: int = 1
    mode: str = "sync"
    overlap: int = 0
    modes: ClassVar[Tuple[str, ...]] = ("sync",)

    def __post_init__(self) -> None:
        period = _int("period", self.period)
        _set(self, period=period, mode=_mode(self))
        _set(self, overlap=_overlap(self.overlap, period))

    def __repr__(self) -> str:
        return f"ModelAverage(period={self.period}, overlap={self.overlap})"


@dataclass(frozen=True)
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

    period: int = 4
    alpha: Optional[float] = None
    mode: str = "sync"
    overlap: int = 0

    def __post_init__(self) -> None:
        period = _int("period", self.period)
        alpha = None if self.alpha is None else number("alpha", self.alpha, 0.0, 1.0)
        _set(self, period=period, alpha=alpha, mode=_mode(self))
        _set(self, overlap=_overlap(self.overlap, period))

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


@dataclass(frozen=True)
class DiLoCo(Strategy):
    """DiLoCo (Douillard et al. 2023): groups take ``period`` inner steps, then push the
    pseudo-gradient ``D = x_start - x``; the servers run outer Nesterov SGD on ``w`` (PyTorch's
    ``SGD(nesterov=True)`` / MXNet's NAG, no weight decay): ``v = m v + D'; w -= lr (D' + m v)``
    where ``D'`` is the round's mean. Groups then restart from ``x = x_start = w``. In async
    mode each push is ``1/G`` of a round: ``w -= outer_lr D / G`` at once, and the momentum
    is applied once every ``G`` pushes, with ``A`` the sum of their ``D / G`` (delayed
    Nesterov): ``v = m v + A; w -= outer_lr m v``. The sync hyperparameters carry over.

    ``overlap=tau`` (``0 <= tau < period``) pushes ``D = x_start - x_t`` from a snapshot and
    applies the servers' ``w`` ``tau`` steps later: ``x = w + (x_{t+tau} - x_t)``,
    ``x_start = w``.

    Example::

        sync = hvd_ps.DiLoCo(period=16, outer_lr=0.7, momentum=0.9)
        sync = hvd_ps.DiLoCo(period=64, overlap=16)
    """

    period: int = 16
    outer_lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True
    mode: str = "sync"
    overlap: int = 0

    def __post_init__(self) -> None:
        period = _int("period", self.period)
        outer_lr = number("outer_lr", self.outer_lr, 0.0, math.inf)
        momentum = number("momentum", self.momentum, 0.0, 1.0, open_low=False)
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"nesterov must be True or False, got {self.nesterov!r}")
        mode = _mode(self)
        _set(self, period=period, outer_lr=outer_lr, momentum=momentum, mode=mode)
        _set(self, overlap=_overlap(self.overlap, period))
