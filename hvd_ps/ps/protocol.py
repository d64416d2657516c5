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
Add           ``w += scale * g``
Optimizer     ``w = opt(w, scale * g)`` with one of MXNet's optimizers in :data:`OPTIMIZERS`,
              its learning rate multiplied by ``lr_scale``
Nesterov      outer SGD with momentum, the momentum applied once every ``delay`` pushes:
              ``D = clip(scale g) + wd w; A += D``; at each ``delay``-th push
              ``v = m v + A; A = 0`` and ``w -= lr (D + m v)`` (``nesterov``) or
              ``w -= lr (D + m v_old)`` (heavy ball);
              at every other push ``w -= lr D``. With ``delay = 1``: ``v = m v + D;
              w -= lr (D + m v)`` or ``w -= lr v``
WireState     a compressed bucket's shard (below): its float32 state, kept by the rule; a push
              adopts ``w`` as the state (the first) or copies the state into ``w`` (later)
WireKey       what a leader pushes to a compressed shard, decoded and applied to the state of
              key ``base`` by that key's rule ``inner``; ``w`` becomes the servers' reply
WireRejoin    a rejoin request of a group for the compressed shard ``base`` (async): its shadow
              becomes the state, its sequence starts afresh, ``w`` becomes the state and the
              request
Clock         the groups' clocks (:class:`Clock`): ``w[i] = max(w[i], g[i])``, the exchanges
              group ``i`` completed, and ``w[G + i] = g[G + i]`` where ``g[G + i] >= 0``,
              its seconds per step; a push carries one group's, ``-1`` elsewhere
Rounds        a quorum's sync rounds (:class:`Rounds`): which groups' pushes each round holds,
              closed once ``quorum`` groups reported and ``grace`` seconds passed (or all did)
WireCommit    apply the rounds :class:`Rounds` closed to the quorum shards ``bases`` of this
              server, in order; ``w`` is the rounds' record as pushed
CopyState     ``w`` is a checkpoint's copy of the state of key ``source`` (its optimizer's or
              its momentum's array number ``leaf``): a push (of anything) copies that state
              into ``w`` (``load=False``), or ``w`` into that state and sets the optimizer's
              update count to ``count`` (``load=True``)
============  ==================================================================================

The compressed wire (``int8``, ``int4``)
----------------------------------------
With a compressed wire every bucket of ``N`` float32 elements is cut into shards of at most
:func:`shard_limit` elements (a multiple of the block size ``B``), each shard a whole key on one
server (below MXNet's ``MXNET_KVSTORE_BIGARRAY_BOUND``, so MXNet never splits it). A shard has a
float32 *state key* (:class:`WireState`: the servers' state, the global model) and uint8 *wire
keys* (:class:`WireKey`): in sync mode one that every leader pushes to, in async mode one per
group. What crosses a wire key is one *part*, whose bytes travel as the float32 elements of the
key (MXNet's servers take floating-point arrays only, and convert other dtypes than float32
when they please; nothing does arithmetic on them)::

    offset  size  field (little-endian)
    0       2     magic b"HQ"
    2       1     format version (1)
    3       1     bits per value: 8 or 4
    4       2     sender: the group id, or 0xFFFF for the servers' reply
    6       2     block size B (a multiple of 8, 8..32768)
    8       4     sequence: the sender's exchange count on this key (1, 2, ...); a reply
                  carries the count of the exchange it answers (0: the initial, empty reply)
    12      4     n, the elements of the shard
    16      ...   ceil(n / B) blocks: a float32 scale, then B codes: int8, or int4 packed two
                  per byte (element 2k in the low nibble, 2k + 1 in the high one), two's
                  complement; a short last block is padded with zero codes

The quantizer, exactly (``Q = 127`` for int8, ``7`` for int4; float32 arithmetic, rounding
half to even): per block of values ``v``, ``m = max|v|``; if ``m < 2**-126`` every code is 0
and the scale 0; else ``inv = Q / m``, ``code = clip(rint(v * inv), -Q, Q)`` and ``scale =
m / Q``. A value decodes as ``code * scale``.

What crosses is always a difference against a value both ends hold: a leader pushes what its
strategy sends (the gradient, EASGD's ``d``, DiLoCo's pseudo-gradient, ModelAverage's progress
since the last average) plus its *residual* ``e`` (float32, per bucket): it encodes ``v = send +
e`` and keeps ``e = v - decode(code)``. The servers decode, apply the rule ``inner`` to the
float32 state (sync: once a round has one push from every group, the decoded pushes summed in
group order), then reply with the change of the state since the copy the leaders hold, the
*shadow*: ``code = encode(state - shadow)``, ``shadow += decode(code)``. Every leader adds the
same decoded reply to its own copy, so its copy and the servers' shadow agree bit for bit, and
what a reply leaves out stays in ``state - shadow`` for the next one: the servers' residual. In
async mode each group has its own wire key and the servers keep one shadow per group (4 bytes
per parameter and group of server memory), so a leader that pulls at its own time gets exactly
the change since its own last reply.

A group that rejoins an async tier (its leader died; a new one starts) has no copy, so each
shard also has a float32 *rejoin key* (:class:`WireRejoin`, ``n + 4`` elements: 4 bytes per
parameter of server memory for the whole job, whatever the number of groups). The new leader
pushes to it a *rejoin request* in its last 16 bytes: the header above with magic ``b"HJ"``,
its group as the sender and a random nonce as the sequence. The servers set that group's
shadow to the state and forget its sequence (its next push sets it), and set the key to the
state followed by the request; the leader pulls the key, takes the state as its copy, and
checks that the request is its own (two groups rejoining at once may overwrite each other's:
it then asks again). A rejoin costs a float32 model each way, once.

This module imports neither MXNet nor Horovod: the server, the leaders and the tests share it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, Union, get_args

from .. import arguments
from ..arguments import number
from ..errors import ConfigError

#: MXNet's ``kController`` command id: carries hvd_ps's commands (and a stock worker's
#: ``kv.set_optimizer`` pickle, which the server tells apart because it is not JSON)
CONTROLLER_HEAD = 0
#: MXNet's ``kSyncMode`` command id: makes the servers count rounds (one push per worker)
SYNC_MODE_HEAD = 3
#: MXNet's ``kSetMultiPrecision`` command id: the servers keep a float32 master copy of every
#: float16 key, update it in float32 and answer pulls with its float16 rounding. MXNet 1.9's
#: server never initialises this flag (``multi_precision_`` in ``kvstore_dist_server.h``), so
#: without the command a float16 key was kept in float32 or float16 depending on the memory a
#: server process happened to get; every leader sends it before its first key
MULTI_PRECISION_HEAD = 1
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
    """``w += scale * g``: EASGD's centre; ModelAverage's average on a compressed wire."""

    scale: float = 1.0
    updater: ClassVar[str] = "add"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", number("scale", self.scale, 0.0, math.inf))

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


#: a group's clock once it has finished training: it holds no other group back
CLOCK_DONE = float(2**24)
#: the most seconds per local step a clock carries
MAX_PACE = 1.0e6


@dataclass(frozen=True)
class Clock:
    """The clocks of an async tier's ``groups`` groups: ``2 G`` float32 elements. The first
    ``G`` are how many exchanges each group completed (a leader pushes its count after its
    exchange's pull returned, so the exchange was applied); the servers keep the elementwise
    maximum, so a push repeated or reordered changes nothing. :data:`CLOCK_DONE` marks a group
    that finished. Counts are whole numbers below ``2**24`` (float32 holds them exactly). The
    next ``G`` are each group's seconds per local step as it last measured them (``period=
    'auto'``), at most :data:`MAX_PACE`; 0 until known. A push holds one group's count and
    pace and ``-1`` elsewhere."""

    groups: int
    updater: ClassVar[str] = "clock"

    def __post_init__(self) -> None:
        arguments.integer("groups", self.groups, low=1, high=SERVERS - 1, high_name="65534")

    def state_layout(self) -> Tuple[str, ...]:
        return ()


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


#: the compressed wire formats, by name: bits per value
WIRE_BITS = {"int8": 8, "int4": 4}
#: size of a part's header (bytes), its magic, and the sender id of the servers' reply
HEADER_BYTES = 16
MAGIC = b"HQ"
SERVERS = 0xFFFF
#: a rejoin request's magic, and the float32 elements a rejoin key holds beyond its shard's
REJOIN_MAGIC = b"HJ"
REJOIN_EXTRA = HEADER_BYTES // 4
#: the largest block size a header can carry
MAX_BLOCK = 32768
#: the rules a compressed shard's state may run
WIRE_INNER = ("add", "optimizer", "nesterov")
#: how a compressed shard's rounds run: sync (MXNet-style: one push of every group), async
#: (each push alone), quorum (sync rounds that :class:`Rounds` closes)
WIRE_MODES = ("sync", "async", "quorum")


def levels(bits: int) -> int:
    """``Q``: the largest code of ``bits``-bit values (127 for int8, 7 for int4)."""
    return (1 << (bits - 1)) - 1


def block_bytes(bits: int, block: int) -> int:
    """Bytes of one block on the wire: its float32 scale and its codes."""
    return 4 + block * bits // 8


def part_bytes(n: int, bits: int, block: int) -> int:
    """Bytes of the part of a shard of ``n`` elements: the header and its blocks."""
    return HEADER_BYTES + -(-n // block) * block_bytes(bits, block)


def shard_limit(bits: int, block: int, bound: int) -> int:
    """The most elements a shard may hold so that MXNet keeps both its keys whole on one
    server: fewer than ``bound`` (``MXNET_KVSTORE_BIGARRAY_BOUND``) float32 elements (with a
    rejoin key's :data:`REJOIN_EXTRA`) and wire bytes; a multiple of ``block``, at least one
    block."""
    blocks = max(1, (bound - 1 - HEADER_BYTES) // block_bytes(bits, block))
    return max(block, min(blocks * block, (bound - 1 - REJOIN_EXTRA) // block * block))


def shards(n: int, block: int, limit: int, servers: int) -> List[Tuple[int, int]]:
    """A bucket of ``n`` elements cut into shards of whole blocks (the last may be short): at
    most ``limit`` elements each, and one per server while each can hold a block. Returns the
    ``(first, last + 1)`` element range of each."""
    if n <= 0:
        return []
    blocks = -(-n // block)
    count = max(-(-n // limit), min(servers, blocks))
    per = min(limit, -(-blocks // count) * block)
    return [(lo, min(n, lo + per)) for lo in range(0, n, per)]


def check_wire(bits: int, block: int) -> None:
    """``bits`` and ``block`` of a compressed wire, or ConfigError naming them."""
    if bits not in WIRE_BITS.values():
        raise ConfigError(f"bits={bits!r} must be 8 (int8) or 4 (int4)")
    arguments.integer("block", block, low=8, high=MAX_BLOCK, high_name=str(MAX_BLOCK))
    if block % 8:
        raise ConfigError(
            f"block={block} must be a multiple of 8 (int4 packs two values per byte, and a "
            "part travels as float32 elements, four bytes each)"
        )


def _record(value: Any, allowed: Tuple[str, ...], what: str) -> Any:
    """A nested rule: a record, or its JSON form ``{"updater": ..., "params": {...}}``."""
    if isinstance(value, dict):
        value = _decode_rule(value.get("updater"), value.get("params", {}))
    if getattr(value, "updater", None) not in allowed:
        raise ConfigError(f"{what} must be one of the updaters {', '.join(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True)
class WireState:
    """A compressed shard's state key: the servers' float32 state of ``n`` elements under the
    rule ``inner`` (:data:`WIRE_INNER`), the shadows of the leaders' copies (one in ``sync``
    mode, one per group of ``groups`` in ``async`` and ``quorum`` mode) and, in sync mode, the
    round being gathered. ``quorum`` mode is a sync run whose rounds :class:`Rounds` closes
    (a quorum of groups): each group pushes to its own wire key, a round is applied when a
    :class:`WireCommit` names its members, and a leader's reply is written when it asks (a
    round of fewer than every group applies the sum of its members' pushes, as a full round
    would with the others' zero: each push weighs the same whichever round it joins).
    The first push to this key adopts ``w`` (its initial value) as the state; every later one
    copies the state into ``w`` (to read the global model)."""

    inner: Any
    bits: int
    block: int
    groups: int
    mode: str
    n: int
    updater: ClassVar[str] = "wire_state"

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", _record(self.inner, WIRE_INNER, "inner"))
        check_wire(self.bits, self.block)
        arguments.integer("groups", self.groups, low=1, high=SERVERS - 1, high_name="65534")
        if self.mode not in WIRE_MODES:
            raise ConfigError(f"mode={self.mode!r} must be one of {', '.join(WIRE_MODES)}")
        arguments.integer("n", self.n, low=1)

    @property
    def per_group(self) -> bool:
        """Whether each group has its own wire key and shadow (async and quorum mode)."""
        return self.mode != "sync"

    def state_layout(self) -> Tuple[str, ...]:
        shadows = (
            tuple(f"shadow/{g}" for g in range(self.groups)) if self.per_group else ("shadow",)
        )
        return ("state",) + shadows + tuple(f"inner/{x}" for x in self.inner.state_layout())


@dataclass(frozen=True)
class WireKey:
    """A compressed shard's wire key: what a push carries is decoded and applied to the state
    of key ``base`` (a :class:`WireState`); ``group`` is the one group that pushes here (async),
    or -1 when every group does (sync). ``w`` holds the servers' latest reply."""

    base: int
    group: int = -1
    updater: ClassVar[str] = "wire_key"

    def __post_init__(self) -> None:
        arguments.integer("base", self.base, low=0)
        arguments.integer("group", self.group, low=-1, high=SERVERS - 1, high_name="65534")

    def state_layout(self) -> Tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class WireRejoin:
    """A compressed shard's rejoin key (async; the format is in this module's docstring): a
    push of ``n + 4`` float32 elements whose last 16 bytes are a rejoin request sets that
    group's shadow of shard ``base`` (a :class:`WireState` of ``n`` elements) to the state and
    starts its sequence afresh; ``w`` becomes the state followed by the request."""

    base: int
    n: int
    updater: ClassVar[str] = "wire_rejoin"

    def __post_init__(self) -> None:
        arguments.integer("base", self.base, low=0)
        arguments.integer("n", self.n, low=1)

    def state_layout(self) -> Tuple[str, ...]:
        return ()


#: what a push to a :class:`Rounds` key asks: a poll (close a round whose grace ran out), a
#: report (the sender's push of exchange ``seq`` is on every server), the sender is done, a
#: flush (a checkpoint: close the open round now, whoever reported), a resume (a checkpoint
#: was loaded: the sender's last exchange was ``seq``)
ROUND_POLL, ROUND_REPORT, ROUND_DONE, ROUND_FLUSH, ROUND_RESUME = 0, 1, 2, 3, 4
#: every kind a :class:`Rounds` key takes
ROUND_KINDS = (ROUND_POLL, ROUND_REPORT, ROUND_DONE, ROUND_FLUSH, ROUND_RESUME)
#: the head of a :class:`Rounds` record: rounds closed, the first round the ring holds, the
#: grace in use (seconds; -1: none yet, a round waits for every group), and, in a record a
#: leader pushes to a commit key, its group + 1 (0 in the record the servers keep)
ROUND_HEAD = 4
#: the rounds a :class:`Rounds` key remembers (its ring)
ROUND_WINDOW = 16
#: the auto grace: this fraction of the median interval between the last rounds' closes
GRACE_FRACTION = 0.1
#: how many closes the auto grace looks back on
GRACE_HISTORY = 8


def rounds_size(groups: int, window: int = ROUND_WINDOW) -> int:
    """Float32 elements of a :class:`Rounds` key (and of a :class:`WireCommit` key)."""
    return ROUND_HEAD + 3 * groups + window * groups


@dataclass(frozen=True)
class Rounds:
    """The sync rounds of ``groups`` groups closed by a quorum: one key of
    :func:`rounds_size` float32 elements, on one server.

    A push is ``[kind, group, seq, 0, ...]`` (:data:`ROUND_KINDS`). A group reports its exchange
    ``seq`` (1, 2, ...: one more than its last) once its pushes to every shard were applied; the
    report joins the open round. The open round closes, at a push, when every group that is not
    done reported, or when ``min(quorum, groups not done)`` did and ``grace`` seconds passed
    since the one that made that count (``grace = -1``: :data:`GRACE_FRACTION` of the median
    interval between the last :data:`GRACE_HISTORY` closes; until two closes are known, every
    group). A flush closes the open round at once if any group reported in it (a checkpoint,
    once every group reported its exchanges); a resume sets the sender's last ``seq`` (a
    checkpoint's exchanges) before it reports anything. ``w`` is, in float32: the head (rounds
    closed ``R``, the first round of the ring ``r0``, the grace in use, 0), per group the round
    its last report joined, per group its report in the open round (its ``seq``, 0: none), per
    group its last reported ``seq``, then the ring: for round ``r`` in ``r0 .. R`` row ``(r - 1)
    % window``, per group the ``seq`` its push in round ``r`` carried (0: none)."""

    groups: int
    quorum: int
    grace: float = -1.0
    window: int = ROUND_WINDOW
    updater: ClassVar[str] = "rounds"

    def __post_init__(self) -> None:
        arguments.integer("groups", self.groups, low=1, high=SERVERS - 1, high_name="65534")
        arguments.integer(
            "quorum", self.quorum, low=1, high=self.groups + 1, high_name="groups + 1"
        )
        if self.grace != -1.0:
            object.__setattr__(
                self, "grace", number("grace", self.grace, 0.0, math.inf, open_low=False)
            )
        arguments.integer("window", self.window, low=2)

    @property
    def size(self) -> int:
        return rounds_size(self.groups, self.window)

    def state_layout(self) -> Tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class WireCommit:
    """A server's commit key of one trainer's quorum shards (one per group, each pushed by its
    own leader only, so that what it pulls answers its own push): a push is the :class:`Rounds`
    record of ``groups`` groups as a leader pulled it, its head's last element the leader's
    group + 1 (0: none); each shard in ``bases`` (the state keys of :class:`WireState` in
    quorum mode, on this server) applies the rounds it has not applied yet, up to the record's
    ``R``, in order, with the members the ring names, then writes the leader's reply (the
    change of the state since its shadow) into that group's wire key. ``w`` becomes the record
    pushed with ``R`` replaced by the rounds this server's shards have applied (possibly
    more: a later record may have come first)."""

    bases: Tuple[int, ...]
    groups: int
    window: int = ROUND_WINDOW
    updater: ClassVar[str] = "wire_commit"

    def __post_init__(self) -> None:
        if not isinstance(self.bases, (list, tuple)) or not self.bases:
            raise ConfigError(f"bases={self.bases!r} must be a non-empty list of keys")
        bases = tuple(arguments.integer("bases", b, low=0) for b in self.bases)
        object.__setattr__(self, "bases", bases)
        arguments.integer("groups", self.groups, low=1, high=SERVERS - 1, high_name="65534")
        arguments.integer("window", self.window, low=2)

    def state_layout(self) -> Tuple[str, ...]:
        return ()


Rule = Union[
    Assign,
    Add,
    Optimizer,
    Nesterov,
    Clock,
    CopyState,
    WireState,
    WireKey,
    WireRejoin,
    Rounds,
    WireCommit,
]
#: every updater a server knows, by the name a command carries
UPDATERS: Dict[str, Type[Any]] = {r.updater: r for r in get_args(Rule)}


@dataclass(frozen=True)
class Command:
    """Set the rule of one PS key on every server."""

    key: int
    rule: Rule

    def __post_init__(self) -> None:
        arguments.integer("key", self.key, low=0)

    def encode(self) -> str:
        params = _params(self.rule)
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
        rule = _decode_rule(msg.get("updater"), msg.get("params", {}))
        return Command(msg.get("key"), rule)  # type: ignore[arg-type]


def _params(rule: Any) -> Dict[str, Any]:
    """A record's fields as JSON values (a nested record as its updater and parameters)."""
    out = {}
    for f in fields(rule):
        value = getattr(rule, f.name)
        if hasattr(value, "updater"):
            value = {"updater": value.updater, "params": _params(value)}
        out[f.name] = value
    return out


def _decode_rule(name: Any, params: Any) -> Any:
    kind = UPDATERS.get(name)
    if kind is None:
        raise ConfigError(f"unknown updater {name!r} (known: {', '.join(UPDATERS)})")
    if not isinstance(params, dict):
        raise ConfigError(f"params of {kind.updater!r} must be a JSON object, got {params!r}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{kind.updater!r} has no parameter {', '.join(unknown)}")
    try:
        return kind(**params)
    except TypeError as err:  # a required parameter is missing
        raise ConfigError(f"{kind.updater!r}: {err}") from None


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
    return rule.updater, _params(rule)
