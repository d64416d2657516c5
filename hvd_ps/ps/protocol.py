"""What a group leader tells the PS servers: commands as typed records, encoded in one place.

A leader sets how the servers apply pushes to a key by sending one :class:`Command` over
MXNet's controller channel (command id :data:`CONTROLLER_HEAD`, MXNet's ``kController``), as
JSON::

    {"hvd_ps": 1, "key": <int >= 0>, "updater": <name>, "params": {<the record's fields>}}

The updater is one of the records below; its fields are its parameters, checked when the record
is made, so a leader cannot build a command a server would refuse and a server refuses (and
logs) anything else it receives. A strategy returns a record (:mod:`hvd_ps.train.core.exchanges`),
:class:`hvd_ps.ps.client.Client` sends it, :mod:`hvd_ps.server` decodes it and runs the update rule
of its type. Adding an updater means a record here and its rule in the server.

Each rule gets the server's stored slice ``w`` of the key and what arrived ``g``: in sync mode
the sum of one round of pushes (one per leader), in async mode a single push.

============  ==================================================================================
record        what a push does to ``w``
============  ==================================================================================
Assign        ``w = g`` (the default of every key; a row-sparse push replaces its rows)
Add           ``w += g``
Optimizer     ``w = opt(w, scale * g)`` with one of MXNet's optimizers in :data:`OPTIMIZERS`,
              its learning rate multiplied by ``lr_scale``
Nesterov      outer SGD with momentum, the momentum applied once every ``delay`` pushes:
              ``D = clip(scale g) + wd w; A += D``; at each ``delay``-th push
              ``v = m v + A; A = 0`` and ``w -= lr (D + m v)`` (``nesterov``) or
              ``w -= lr (D + m v_old)`` (heavy ball);
              at every other push ``w -= lr D``. With ``delay = 1``: ``v = m v + D;
              w -= lr (D + m v)`` or ``w -= lr v``
CopyState     ``w`` is a checkpoint's copy of the state of key ``source`` (its optimizer's or
              its momentum's array number ``leaf``): a push (of anything) copies that state
              into ``w`` (``load=False``), or ``w`` into that state and sets the optimizer's
              update count to ``count`` (``load=True``)
============  ==================================================================================

This module imports neither MXNet nor Horovod: the server, the leaders and the tests share it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, Union

from .. import arguments
from ..arguments import number
from ..errors import ConfigError

#: MXNet's ``kController`` command id: carries hvd_ps's commands (and a stock worker's
#: ``kv.set_optimizer`` pickle, which the server tells apart because it is not JSON)
CONTROLLER_HEAD = 0
#: MXNet's ``kSyncMode`` command id: makes the servers count rounds (one push per worker)
SYNC_MODE_HEAD = 3
#: the ``hvd_ps`` field of every command; a server refuses any other
VERSION = 1
#: MXNet optimizers a server runs for :class:`Optimizer`, by name; their arguments are numbers
OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "signum", "ftrl")


def round_scale(mode: str, num_groups: int) -> float:
    """What a server multiplies what arrived by: a sync round holds the sum of ``num_groups``
    pushes and the rule wants their mean; an async push stands alone."""
    return 1.0 / num_groups if mode == "sync" else 1.0


@dataclass(frozen=True)
class Assign:
    """``w = g``: the default rule of every key (ModelAverage's sum of a round)."""

    updater: ClassVar[str] = "assign"

    def state_layout(self) -> Tuple[str, ...]:
        """The arrays a server keeps per key under this rule, by name: none."""
        return ()


@dataclass(frozen=True)
class Add:
    """``w += g``: EASGD's centre."""

    updater: ClassVar[str] = "add"

    def state_layout(self) -> Tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Optimizer:
    """``w = opt(w, scale * g)``: GradientPush's server-side optimizer, by name, with its
    learning rate (``args``' or the optimizer's default) multiplied by ``lr_scale``."""

    name: str
    args: Dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    lr_scale: float = 1.0
    updater: ClassVar[str] = "optimizer"

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if not isinstance(self.args, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (int, float, bool)))
            for k, v in self.args.items()
        ):
            raise ConfigError(
                f"optimizer_params of {self.name!r} must be numbers by name, got {self.args!r}"
            )
        object.__setattr__(self, "scale", number("scale", self.scale, 0.0, math.inf))
        object.__setattr__(self, "lr_scale", number("lr_scale", self.lr_scale, 0.0, math.inf))

    def state_layout(self) -> Tuple[str, ...]:
        """The optimizer's state arrays (MXNet's ``create_state``, flattened by
        :func:`state_leaves`), by position. Imports MXNet (leaders only call it)."""
        import mxnet as mx

        opt = mx.optimizer.create(self.name, **self.args)
        leaves = state_leaves(opt.create_state(0, mx.nd.zeros((1,))))
        return tuple(str(i) for i in range(len(leaves)))


@dataclass(frozen=True)
class Nesterov:
    """DiLoCo's outer step: heavy-ball or Nesterov SGD on what arrived, times ``scale``, the
    momentum applied once every ``delay`` pushes (the async rules' delayed Nesterov; async
    GradientPush's too, with MXNet SGD's ``clip`` of the scaled gradient and weight decay
    ``wd``: ``D = clip(scale g) + wd w``)."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = True
    scale: float = 1.0
    delay: int = 1
    wd: float = 0.0
    clip: Optional[float] = None
    updater: ClassVar[str] = "nesterov"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", number("lr", self.lr, 0.0, math.inf))
        m = number("momentum", self.momentum, 0.0, 1.0, open_low=False)
        object.__setattr__(self, "momentum", m)
        arguments.flag("nesterov", self.nesterov)
        object.__setattr__(self, "scale", number("scale", self.scale, 0.0, math.inf))
        arguments.integer("delay", self.delay, low=1)
        object.__setattr__(self, "wd", number("wd", self.wd, 0.0, math.inf, open_low=False))
        if self.clip is not None:
            object.__setattr__(self, "clip", number("clip", self.clip, 0.0, math.inf))

    def state_layout(self) -> Tuple[str, ...]:
        """The state arrays a server keeps per key: the momentum ``v``, and with a delay the
        sum ``a`` of the pushes since the momentum was last applied."""
        return ("v",) if self.delay == 1 else ("v", "a")


@dataclass(frozen=True)
class CopyState:
    """Checkpoints: copy one array of key ``source``'s server state to or from this key.

    ``count`` (with ``load``) is how many pushes the key has had: an optimizer's update count
    (Adam's bias correction), and for a delayed :class:`Nesterov` where it stands in its cycle
    (``count % delay`` pushes since the momentum was last applied)."""

    source: int
    leaf: int
    load: bool = False
    count: int = 0
    updater: ClassVar[str] = "copy_state"

    def __post_init__(self) -> None:
        for name in ("source", "leaf", "count"):
            arguments.integer(name, getattr(self, name), low=0)
        arguments.flag("load", self.load)

    def state_layout(self) -> Tuple[str, ...]:
        return ()


Rule = Union[Assign, Add, Optimizer, Nesterov, CopyState]
#: every updater a server knows, by the name a command carries
UPDATERS: Dict[str, Type[Any]] = {
    r.updater: r for r in (Assign, Add, Optimizer, Nesterov, CopyState)
}


@dataclass(frozen=True)
class Command:
    """Set the rule of one PS key on every server."""

    key: int
    rule: Rule

    def __post_init__(self) -> None:
        arguments.integer("key", self.key, low=0)

    def encode(self) -> str:
        params = asdict(self.rule)
        return json.dumps(
            {"hvd_ps": VERSION, "key": self.key, "updater": self.rule.updater, "params": params}
        )

    @staticmethod
    def decode(body: Union[bytes, str]) -> Command:
        """The command in ``body``; ``ValueError`` (a :class:`ConfigError` or a JSON error) if
        it is not one: another version, an unknown updater, a missing or unexpected
        parameter, or a value out of range."""
        msg = json.loads(body)
        if not isinstance(msg, dict) or msg.get("hvd_ps") != VERSION:
            raise ConfigError(f"not an hvd_ps command of version {VERSION}")
        kind = UPDATERS.get(msg.get("updater"))  # type: ignore[arg-type]
        if kind is None:
            raise ConfigError(
                f"unknown updater {msg.get('updater')!r} (known: {', '.join(UPDATERS)})"
            )
        params = msg.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"params of {kind.updater!r} must be a JSON object, got {params!r}")
        known = {f.name for f in fields(kind)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{kind.updater!r} has no parameter {', '.join(unknown)}")
        try:
            rule = kind(**params)
        except TypeError as err:  # a required parameter is missing
            raise ConfigError(f"{kind.updater!r}: {err}") from None
        return Command(msg.get("key"), rule)  # type: ignore[arg-type]


def state_leaves(state: Any) -> List[Any]:
    """The arrays of an MXNet optimizer state (None, an array, or nested tuples of them), in
    the order a checkpoint stores them: the order both sides of :class:`CopyState` count."""
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in state_leaves(part)]
    return [state]


def describe(rule: Rule) -> Tuple[str, Dict[str, Any]]:
    """The updater's name and parameters, for a log line."""
    return rule.updater, asdict(rule)
