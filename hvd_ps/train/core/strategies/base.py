"""What every strategy has: its value's base class, its leader exchange's base class, and the
registry that ties a strategy's value type to its exchange.

A strategy lives in one file of this package: its value (a frozen dataclass of its arguments),
its :class:`Exchange` (the leader's math and the servers' rule, a record of
:mod:`hvd_ps.ps.protocol`, whose state layout checkpoints read from the record), and one
:func:`register` call. Nothing else in hvd_ps names a strategy's class.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type, Union

from .... import arguments
from ....errors import ConfigError, HvdPsError, same_on_every_rank
from ....ps import protocol
from ..buckets import Bucket, fresh
from ..interfaces import Flat, PSClient

MODES = ("sync", "async")
#: GradientPush's server optimizer: its name and numeric arguments
ServerOptimizer = Tuple[str, Dict[str, Any]]


class _CheckedArguments(type):
    """A strategy's arguments are checked by name before its constructor sees them: an unknown
    keyword is a :class:`ConfigError` naming the closest valid one, not a ``TypeError``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        with same_on_every_rank():  # the script's arguments: one line per job
            return cls._checked(*args, **kwargs)

    def _checked(cls, *args: Any, **kwargs: Any) -> Any:
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


class Strategy(metaclass=_CheckedArguments):
    """Base of the strategies: a period, a mode, an overlap, and how to bind to a job.

    Not a dataclass itself, so that each strategy (a frozen dataclass) declares its own
    arguments as fields in the order its constructor takes them; these class defaults stand
    for the ones a strategy does not take.
    """

    period: Union[int, str] = 1
    mode = "sync"
    overlap = 0
    #: async: the most exchanges a group may run ahead of the slowest live one (None: any)
    max_staleness: Optional[int] = None
    #: ``period='auto'`` (async): the fewest and the most local steps between exchanges
    min_period: Optional[int] = None
    max_period: Optional[int] = None
    #: sync: the groups a round needs to close (None: every group), and how many seconds it
    #: waits for the others once it has them (None: the servers' adaptive grace)
    quorum: Optional[int] = None
    grace: Optional[float] = None
    #: the modes the strategy has
    modes: ClassVar[Tuple[str, ...]] = MODES
    #: whether the trainer's own optimizer updates the parameters every step
    local_update: ClassVar[bool] = True
    #: whether the servers run the trainer's optimizer (it must then travel by name)
    server_optimizer: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The strategy's class name (``'EASGD'``)."""
        return type(self).__name__

    def validate(self, num_groups: int) -> None:
        """Check arguments that depend on the number of groups (all jobs on the tier)."""

    def bind(
        self,
        num_groups: int,
        wire: Optional[str],
        optimizer: Optional[ServerOptimizer] = None,
    ) -> Exchange:
        """This strategy's exchange for a job of ``num_groups`` groups whose PS traffic is in
        ``wire`` (``None``: the parameters' dtype). ``optimizer`` is the servers' optimizer of a
        strategy with :attr:`server_optimizer`. Checks :meth:`validate` first."""
        entry = _REGISTRY.get(type(self))
        if entry is None:
            raise ConfigError(f"sync: {self!r} is not one of hvd_ps's strategies")
        if self.quorum is not None and self.quorum > num_groups:
            raise ConfigError(
                f"quorum={self.quorum} is more than the {num_groups} groups of the tier: a "
                f"round can close with at most {num_groups} (drop quorum for every group)"
            )
        self.validate(num_groups)
        return entry.make(self, num_groups, wire, optimizer)

    def __repr__(self) -> str:
        """Its arguments by name (a strategy's repr is also what a checkpoint records); the
        :data:`OPTIONAL` ones only when set, so a repr reads as it did before them."""
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name not in OPTIONAL or getattr(self, f.name) is not None
        ]
        return f"{type(self).__name__}({', '.join(shown)})"

    def describe(self) -> str:
        """One line for logs: the strategy with its arguments."""
        return repr(self)

    @property
    def adaptive(self) -> bool:
        """``period='auto'``: each group picks its local steps from the groups' paces."""
        return self.period == "auto"

    @property
    def base_period(self) -> int:
        """The period of a fixed schedule; with ``period='auto'``, ``max_period``: the
        fastest group's, and every group's until the paces are known."""
        return int(self.max_period if self.adaptive else self.period)  # type: ignore[arg-type]

    def _check_common(self) -> None:
        """Check and normalise ``period``, ``mode`` and ``overlap`` (in ``__post_init__``);
        ``period='auto'`` with ``min_period`` and ``max_period``."""
        store(self, mode=_mode(self))
        if self.adaptive:
            self._check_auto()
            high, high_name = int(self.min_period or 1), "min_period"
        else:
            for name in ("min_period", "max_period"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{name}={getattr(self, name)!r} goes with period='auto' (each group "
                        f"picks its local steps); with period={self.period!r} drop it"
                    )
            period = arguments.integer(
                "period", self.period, low=1, hint="or 'auto' (async: from the groups' paces)"
            )
            store(self, period=period)
            high, high_name = period, "period"
        overlap = arguments.integer("overlap", self.overlap, low=0, high=high, high_name=high_name)
        store(self, overlap=overlap)
        self._check_staleness()
        if self.adaptive and self.max_staleness is not None:
            raise ConfigError(
                f"max_staleness={self.max_staleness} with period='auto': groups with other "
                "periods make other numbers of exchanges in the same steps, so a collective of "
                "the script across groups at a fixed step (an evaluation each epoch) would wait "
                "for a group that waits for the bound: use one of the two"
            )
        self._check_quorum()

    def _check_auto(self) -> None:
        """``period='auto'``: async only; ``1 <= min_period <= max_period`` (``max_period``
        defaults to the strategy's default period)."""
        if self.mode != "async":
            raise ConfigError(
                f"period='auto' lets async groups take local steps by their pace; in "
                f"mode={self.mode!r} every round needs one period: give a number, or use "
                "mode='async'"
            )
        default = next(f.default for f in dataclasses.fields(self) if f.name == "period")  # type: ignore[arg-type]
        low = arguments.integer("min_period", 1 if self.min_period is None else self.min_period, 1)
        high = default if self.max_period is None else self.max_period
        high = arguments.integer("max_period", high, low=1)
        if low > high:
            raise ConfigError(f"min_period={low} must be <= max_period={high}")
        store(self, min_period=low, max_period=high)

    def _check_staleness(self) -> None:
        """Check ``max_staleness`` (after ``mode``): None, or a whole number >= 1, async only."""
        if self.max_staleness is None:
            return
        s = arguments.integer("max_staleness", self.max_staleness, low=1)
        if self.mode != "async":
            raise ConfigError(
                f"max_staleness={s} bounds how far async groups run ahead of each other; in "
                f"mode={self.mode!r} every round waits for every group already: drop it, or "
                "use mode='async'"
            )
        store(self, max_staleness=s)

    def _check_quorum(self) -> None:
        """Check ``quorum`` and ``grace`` (after ``mode``): sync only; ``quorum`` a whole
        number >= 1 (at most the groups, checked at :meth:`bind`), ``grace`` seconds >= 0 or
        None (adaptive), and only with a quorum."""
        if self.quorum is None:
            if self.grace is not None:
                raise ConfigError(
                    f"grace={self.grace!r} is how long a round waits for the other groups once "
                    "it has its quorum: give quorum=q too (fewer than the groups), or drop it"
                )
            return
        q = arguments.integer("quorum", self.quorum, low=1)
        if self.mode != "sync":
            raise ConfigError(
                f"quorum={q} closes sync rounds without the slowest groups; in "
                f"mode={self.mode!r} no group waits for a round: drop it (max_staleness bounds "
                "how far async groups drift apart), or use mode='sync'"
            )
        store(self, quorum=q)
        if self.grace is not None:
            store(self, grace=arguments.number("grace", self.grace, 0.0, 1e6, open_low=False))


#: the arguments a strategy's repr shows only when they are set
OPTIONAL = ("max_staleness", "min_period", "max_period", "quorum", "grace")


def store(obj: Any, **values: Any) -> None:
    """Store checked (normalised) values on a frozen dataclass, in ``__post_init__``."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _mode(strategy: Strategy) -> str:
    """``strategy.mode``, checked against the modes its class has."""
    value, allowed, owner = strategy.mode, strategy.modes, type(strategy).__name__
    if value not in allowed:
        msg = f"mode must be one of {', '.join(allowed)}, got {value!r}"
        others = [k.__name__ for k in _REGISTRY if value in k.modes and k.__name__ != owner]
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


@dataclass(frozen=True)
class Send:
    """What a leader sends on the compressed wire: ``alpha * src + beta * ref`` (as
    ``src.pack_axpby(ref, alpha, beta)``), kept in ``b.out`` too if ``keep``."""

    src: Flat
    ref: Any
    alpha: float
    beta: float
    keep: bool = False


class Exchange:
    """A strategy bound to a job: ``G`` groups, PS traffic in ``wire`` (None: as the params).

    The leader's side of one strategy on one :class:`~..buckets.Bucket` at a time. Every
    method only queues work on MXNet's engine; the schedule waits once for all buckets, so
    what follows a pull reads it through engine operations. State an exchange keeps between
    exchanges (DiLoCo's ``x_start``) lives here, never on the strategy value the user made,
    and checkpoints see it only through :meth:`state_arrays`."""

    #: whether the strategy can start an exchange and apply it later (:meth:`launch`)
    overlaps: ClassVar[bool] = True

    def __init__(self, strategy: Strategy, num_groups: int, wire: Optional[str]) -> None:
        self.strategy = strategy
        self.groups = num_groups
        #: bits of a compressed wire (8, 4), else None
        self.bits = protocol.WIRE_BITS.get(wire or "")
        #: the dtype of what is pushed and pulled (None: the parameters'); on a compressed wire
        #: the leader's buffers stay float32 and :mod:`hvd_ps.train.core.wire` encodes them
        self.wire = None if self.bits else wire
        #: the servers' rule for every key of the trainer
        self.rule: protocol.Rule = protocol.Assign()
        #: ``pull_global`` sets ``x = global_scale * (value on the PS)``
        self.global_scale = 1.0
        #: what this exchange's push is weighted by: 1, or with ``period='auto'`` its local
        #: steps over the base period (set by the schedule; DiLoCo's math reads it)
        self.weight = 1.0
        #: sync rounds closed by a quorum of fewer than every group: their record (None:
        #: every round waits for every group)
        self.quorum: Optional[protocol.Rounds] = None
        q = strategy.quorum
        if q is not None and q < num_groups:
            if not self.bits:
                raise ConfigError(
                    f"quorum={q} needs a compressed wire (wire='int8' or 'int4'): MXNet's "
                    f"servers close the rounds of {wire or 'float32'} keys, always with every "
                    "group, and hvd_ps's rules close those of compressed ones"
                )
            grace = -1.0 if strategy.grace is None else float(strategy.grace)
            self.quorum = protocol.Rounds(num_groups, q, grace)

    def initial(self, b: Bucket) -> Any:
        """The key's initial value on the PS (default: the parameters)."""
        return b.params.pack(dtype=self.wire, out=fresh(b, self.wire))

    def rejoin(self, b: Bucket) -> None:
        """A group that rejoins the tier: ``x = global_scale * (the key's value)``, which the
        leader pulled into ``b.pulled`` (the centre, the servers' weights)."""
        b.params.unpack(b.pulled, alpha=self.global_scale)

    def exchange(self, b: Bucket, client: PSClient) -> None:
        """The blocking exchange of one bucket; leaves the new ``x`` in the parameters."""
        raise HvdPsError(f"{type(self).__name__} defines no exchange")

    def launch(self, b: Bucket, client: PSClient) -> None:
        """Overlap: start the exchange from the snapshot ``b.snap`` (packed by the schedule)
        without waiting; the parameters are not touched."""
        raise HvdPsError(f"{self.strategy.name} has no overlapped exchange")

    def apply(self, b: Bucket) -> None:
        """Overlap: apply the exchange :meth:`launch` started to the current parameters (the
        schedule has waited for ``b.pulled``)."""
        raise HvdPsError(f"{self.strategy.name} has no overlapped exchange")

    def state_arrays(self) -> Dict[str, Any]:
        """The arrays this exchange keeps between exchanges, by a name unique within the
        trainer (checkpoints write them and load into them in place). Default: none."""
        return {}

    # -- the compressed wire: b.pulled is the leader's copy of the servers' state ------------
    def wire_send(self, b: Bucket, src: Flat, blocking: bool) -> Optional[Send]:
        """What crosses the wire, from ``src`` (the parameters if ``blocking``, else the
        snapshot ``x_t``) and ``b.pulled`` (the copy of the servers' state as of the last
        exchange): a :class:`Send`, which the wire encodes in the same pass, or None when it
        is in ``b.out`` already."""
        raise HvdPsError(f"{self.strategy.name} has no exchange on a compressed wire")

    def wire_apply(self, b: Bucket, blocking: bool) -> None:
        """Apply the exchange once ``b.pulled`` took the servers' reply."""
        raise HvdPsError(f"{self.strategy.name} has no exchange on a compressed wire")


#: how a strategy's exchange is made: (strategy, num_groups, wire, optimizer) -> Exchange
MakeExchange = Callable[[Any, int, Optional[str], Optional[ServerOptimizer]], "Exchange"]


@dataclass(frozen=True)
class Entry:
    """One strategy: its value type and how to make its exchange for a job."""

    strategy: Type[Strategy]
    make: MakeExchange


_REGISTRY: Dict[Type[Strategy], Entry] = {}


def register(strategy: Type[Strategy], make: MakeExchange) -> None:
    """Add a strategy: ``make(strategy, num_groups, wire, optimizer)`` returns its exchange."""
    _REGISTRY[strategy] = Entry(strategy, make)


def registered() -> List[Type[Strategy]]:
    """Every strategy's value type, in the order they were registered."""
    return list(_REGISTRY)
