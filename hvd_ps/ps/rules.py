"""The servers' update rules: what a push to a key does to the server's slice ``w`` of it.

One class per record of :mod:`hvd_ps.ps.protocol`, in :data:`RULES`; a server makes one
:class:`Rule` per key when a leader's command sets it (:func:`make`). A rule's state (an
optimizer's, the delayed Nesterov's momentum) lives in the rule; checkpoints read and write it
through :meth:`Rule.leaves`, in the order of the record's ``state_layout()``. Adding a rule
means a record in the protocol and a class here.

``g`` is what arrived (in sync mode the sum of a round, in async mode one push); every rule
writes ``w`` in place. MXNet is imported by the server before any rule is made.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type

import numpy as np

from .. import private_api
from . import codec, protocol, wire_host

#: finds the rule of another key on this server (None: it has none)
RuleOf = Callable[[int], Optional["Rule"]]


class Rule:
    """The update rule of one key on one server, made from its protocol ``record`` for ``key``;
    ``rule_of`` finds the rules of the server's other keys."""

    def __init__(self, record: Any, key: int, rule_of: RuleOf) -> None:
        self.record = record
        self.key = key
        self.rule_of = rule_of

    def update(self, g: Any, w: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no update")

    def leaves(self, like: Any) -> List[Any]:
        """The rule's state arrays (created as a first update would, of ``like``'s shape and
        dtype, if there are none yet), in the order of the record's ``state_layout()``."""
        raise ValueError("its rule keeps no server state")

    def loaded(self, count: int) -> None:
        """A checkpoint's state was copied in: the key has had ``count`` pushes so far."""


class Assign(Rule):
    """``w = g`` (a row-sparse push replaces only its rows)."""

    def update(self, g: Any, w: Any) -> None:
        assign(g, w)


class Add(Rule):
    """``w += scale * g``."""

    def update(self, g: Any, w: Any) -> None:
        if self.record.scale == 1.0:
            w += g
        else:
            w += g * self.record.scale


class Optimizer(Rule):
    """One of MXNet's optimizers on ``scale * g``, its learning rate times ``lr_scale``."""

    def __init__(self, record: protocol.Optimizer, key: int, rule_of: RuleOf) -> None:
        super().__init__(record, key, rule_of)
        import mxnet as mx

        args = dict(record.args)
        args["rescale_grad"] = record.scale * float(args.get("rescale_grad", 1.0))
        self.opt = mx.optimizer.create(record.name, **args)
        if record.lr_scale != 1.0:  # async GradientPush: each push is 1/G of a sync round
            self.opt.set_learning_rate(self.opt.learning_rate * record.lr_scale)
        self.state: Any = None
        self.made = False

    def _state(self, like: Any) -> Any:
        if not self.made:
            self.state, self.made = self.opt.create_state(self.key, like), True
        return self.state

    def update(self, g: Any, w: Any) -> None:
        self.opt.update(self.key, w, g, self._state(w))

    def leaves(self, like: Any) -> List[Any]:
        return protocol.state_leaves(self._state(like))

    def loaded(self, count: int) -> None:
        # the update count drives Adam's bias correction and learning-rate schedules
        private_api.set_update_count(self.opt, self.key, count)
        self.opt.num_update = max(self.opt.num_update, count)


class Nesterov(Rule):
    """Outer SGD with (delayed) momentum, as :class:`hvd_ps.ps.protocol.Nesterov` states it.

    ``v`` the momentum, ``a`` the sum of the scaled pushes since ``v`` was last updated (only
    with a delay), ``k`` how many pushes that sum holds."""

    def __init__(self, record: protocol.Nesterov, key: int, rule_of: RuleOf) -> None:
        super().__init__(record, key, rule_of)
        import mxnet as mx

        self.mx = mx
        self.arrays: Dict[str, Any] = {"v": None, "a": None}
        self.k = 0

    def update(self, g: Any, w: Any) -> None:
        r = self.record
        d = g * r.scale
        if r.clip is not None:
            d = self.mx.nd.clip(d, -r.clip, r.clip)
        if r.wd:
            d = d + r.wd * w
        if r.delay > 1:
            a = self.arrays["a"]
            self.arrays["a"] = a = d.copy() if a is None else a + d
        else:
            a = d
        self.k += 1
        if self.k < r.delay:
            w -= r.lr * d  # this push's share of the gradient term; momentum waits
            return
        v_old = self.arrays["v"]
        v = a.copy() if v_old is None else v_old * r.momentum + a
        self.arrays["v"], self.k = v, 0
        if r.delay > 1:
            self.arrays["a"] = None
        if r.nesterov:
            w -= r.lr * (d + r.momentum * v)
        elif v_old is None:
            w -= r.lr * d
        else:
            w -= r.lr * (d + r.momentum * v_old)

    def leaves(self, like: Any) -> List[Any]:
        names = self.record.state_layout()
        for name in names:  # zeros act as no momentum yet / nothing summed yet
            if self.arrays.get(name) is None:
                self.arrays[name] = self.mx.nd.zeros(like.shape, dtype=like.dtype)
        return [self.arrays[name] for name in names]

    def loaded(self, count: int) -> None:
        self.k = count % self.record.delay  # where the key stands in its cycle of pushes


class Clock(Rule):
    """The groups' clocks (:class:`hvd_ps.ps.protocol.Clock`): the counts of completed
    exchanges keep their maximum, the paces (seconds per step) take each push's non-negative
    values. A push that is not ``G`` whole counts in ``-1 .. CLOCK_DONE`` and ``G`` paces in
    ``-1 .. MAX_PACE`` is refused."""

    def update(self, g: Any, w: Any) -> None:
        got = g.asnumpy().ravel()
        n = self.record.groups
        if got.size != 2 * n or w.size != 2 * n:
            raise ValueError(f"a clock push of {got.size} elements to a clock of {n} groups")
        counts, paces = got[:n], got[n:]
        if not (
            np.all(np.isfinite(got))
            and np.all(counts == np.floor(counts))
            and np.all((counts >= -1) & (counts <= protocol.CLOCK_DONE))
            and np.all((paces >= -1) & (paces <= protocol.MAX_PACE))
        ):
            raise ValueError(
                "a clock push that is not whole counts in -1 .. 2**24 and paces in -1 .. 1e6"
            )
        now = w.asnumpy().ravel()
        now[:n] = np.maximum(now[:n], counts)
        now[n:] = np.where(paces >= 0, paces, now[n:])
        w[:] = now.reshape(w.shape)


class CopyState(Rule):
    """Checkpoints: a push copies key ``source``'s state array ``leaf`` into ``w``, or (with
    ``load``) ``w`` into that state; ``rule_of`` finds another key's rule on this server."""

    def update(self, g: Any, w: Any) -> None:
        r = self.record
        source = self.rule_of(r.source)
        if source is None:
            raise ValueError(f"key {r.source} has no server state (it has no rule)")
        try:
            leaves = source.leaves(w)
        except ValueError as err:
            raise ValueError(f"key {r.source}: {err}") from None
        if r.leaf >= len(leaves):
            raise ValueError(f"key {r.source} has {len(leaves)} state arrays, not {r.leaf + 1}")
        if r.load:
            leaves[r.leaf][:] = w
            source.loaded(r.count)
        else:
            w[:] = leaves[r.leaf]


class WireState(Rule):
    """A compressed shard's state (:class:`hvd_ps.ps.protocol.WireState`): the float32
    ``state`` under the rule ``inner``, the shadows of the leaders' copies, and the round a
    sync shard is gathering. Its wire keys' rules (:class:`WireKey`) apply pushes here.
    Checkpoints read and write the state, the shadows and the inner rule's state
    (:meth:`leaves`); after a load each group's next push sets its sequence anew."""

    def __init__(self, record: protocol.WireState, key: int, rule_of: RuleOf) -> None:
        super().__init__(record, key, rule_of)
        import mxnet as mx

        self.mx = mx
        self.inner = make(record.inner, key, rule_of)
        self.state: Any = None  # adopted from the key's initial value by the first push
        #: the leaders' copies: ``-1`` in sync mode (all agree), else one per group
        self.shadow: Dict[int, Any] = {}
        #: per group, the sequence of its last push applied
        self.seq: Dict[int, int] = {}
        self.resync = False  # after a checkpoint's load: a group's next push sets its sequence
        self.pending: Dict[int, Any] = {}  # sync: the round's decoded pushes
        self.pushed: Dict[int, int] = {}  # quorum: the seq of each pending push
        self.rounds = 0
        #: what the inner rule applies (a push decoded, or a round's sum), and per group the
        #: buffers a sync round decodes into: allocated once, written in place
        self.arrived: Any = None
        self.decoded: Dict[int, Any] = {}
        #: quorum mode: per group, its wire key's stored array (its reply is written there
        #: when its leader asks, at a commit)
        self.outs: Dict[int, Any] = {}

    def _groups(self) -> List[int]:
        return list(range(self.record.groups)) if self.record.per_group else [-1]

    def update(self, g: Any, w: Any) -> None:
        if self.state is None:  # the first push: w holds the initial value (kv.init's)
            self.state = w.copy()
            self.shadow = {i: w.copy() for i in self._groups()}
        else:  # later pushes read the state (the global model) through w
            w[:] = self.state

    def apply(self, wire: protocol.WireKey, received: Any, w: Any) -> None:
        """A push to one of this shard's wire keys: decode, check, apply, reply into ``w``."""
        r = self.record
        if self.state is None:
            raise ValueError(f"a push to a wire key of shard {self.key} before its state key")
        # the bytes as they arrived, in place (MXNet handed over the message's memory)
        part = codec.as_bytes(private_api.ndarray_view(received))
        head = codec.read(part, r.bits, r.block, r.n)  # the header, before any block is read
        sender = head.sender
        if wire.group >= 0 and sender != wire.group:
            raise codec.WireError(f"group {sender} pushed to the wire key of group {wire.group}")
        if not 0 <= sender < r.groups:
            raise codec.WireError(f"sender {sender} is not one of the {r.groups} groups")
        if self.resync and sender not in self.seq:
            self.seq[sender] = head.seq - 1
        expected = self.seq.get(sender, 0) + 1
        if head.seq != expected:
            raise codec.WireError(
                f"group {sender} pushed exchange {head.seq}, expected {expected} (a push "
                "applied twice, or one lost)"
            )
        if r.mode != "async" and sender in self.pending:
            raise codec.WireError(
                f"group {sender} pushed twice before round {self.rounds + 1} closed"
            )
        arrived = self._arrived()
        if r.mode == "async":
            values = arrived
        else:
            values = self.decoded.get(sender)
            if values is None:
                values = self.decoded[sender] = np.empty(r.n, np.float32)
        values.fill(0.0)
        wire_host.add_decoded(part, values, r.bits, r.block)  # checks every scale and code
        self.seq[sender] = head.seq
        if r.mode == "async":
            self._step(sender, head.seq, w)
            return
        self.pending[sender] = values
        if r.mode == "quorum":  # applied at the commit of the round it joins
            self.outs[sender] = w
            self.pushed[sender] = head.seq
            return
        if len(self.pending) == r.groups:  # the round's sum, in group order
            self._sum(sorted(self.pending))
            self.pending = {}
            self.rounds += 1
            self._step(-1, self.rounds, w)

    def _sum(self, members: List[int]) -> None:
        """The members' decoded pushes summed into the array the inner rule reads, in group
        order (a round of fewer than every group is no more than their sum: each push counts
        as in a full round)."""
        arrived = self._arrived()
        np.copyto(arrived, self.pending[members[0]])
        for i in members[1:]:
            np.add(arrived, self.pending[i], out=arrived)

    def commit(self, closed: int, members: Dict[int, int]) -> None:
        """Quorum mode: apply round ``closed`` (the next one) with ``members`` (group: the
        ``seq`` of its push in it): their pushes summed, the rule."""
        if closed != self.rounds + 1:
            raise ValueError(f"shard {self.key} applied {self.rounds} rounds, not {closed - 1}")
        for g, seq in members.items():
            if self.pushed.get(g) != seq or g not in self.pending:
                raise codec.WireError(
                    f"round {closed} holds group {g}'s push {seq}, but shard {self.key} has "
                    f"{self.pushed.get(g) if g in self.pending else 'none'} of it pending"
                )
        order = sorted(members)
        self._sum(order)
        for g in order:
            del self.pending[g]
        self.rounds = closed
        self.inner.update(self.arrived, self.state)

    def answer(self, group: int) -> None:
        """Quorum mode: ``group``'s reply to its last push, into its wire key: the change of
        the state since its shadow (whether its push was applied yet or still waits)."""
        if group not in self.outs:
            raise codec.WireError(f"group {group} asked shard {self.key} for a reply, unpushed")
        self._reply(group, self.pushed[group], self.outs[group])

    def _arrived(self) -> Any:
        """The array the inner rule reads, as numpy (its memory, once MXNet no longer reads
        it for the last update)."""
        if self.arrived is None:
            self.arrived = self.mx.nd.zeros((self.record.n,), dtype=np.float32)
        return private_api.ndarray_view(self.arrived)

    def rejoin(self, received: Any, w: Any) -> None:
        """A push to this shard's rejoin key (:class:`hvd_ps.ps.protocol.WireRejoin`): the
        group it names gets the state as its shadow and starts its sequence afresh; ``w``
        becomes the state followed by the request, for the new leader to pull."""
        r = self.record
        if r.mode != "async":
            raise codec.WireError("a rejoin request to a sync shard (only async groups rejoin)")
        if self.state is None:
            raise ValueError(f"a rejoin request to shard {self.key} before its state was set")
        extra = protocol.REJOIN_EXTRA
        got = received.asnumpy()
        if got.size != r.n + extra:
            raise codec.WireError(
                f"a rejoin push of {got.size} elements where {r.n + extra} were expected"
            )
        head = codec.read_rejoin(codec.as_bytes(got[r.n :]), r.bits, r.block, r.n)
        if not 0 <= head.sender < r.groups:
            raise codec.WireError(f"sender {head.sender} is not one of the {r.groups} groups")
        self.shadow[head.sender][:] = self.state
        self.seq.pop(head.sender, None)
        self.resync = True  # (only a group without a sequence takes its next push's)
        w[: r.n] = self.state
        w[r.n :] = received[r.n :]

    def _step(self, group: int, seq: int, w: Any) -> None:
        """Apply what arrived to the state; the reply to ``group`` (or, -1, to every group of
        a sync round) into ``w``, in place: the encoded change of the state since its shadow,
        and the shadow moved on by it, in one pass."""
        self.inner.update(self.arrived, self.state)
        self._reply(group, seq, w)

    def _reply(self, group: int, seq: int, w: Any) -> None:
        """The encoded change of the state since ``group``'s shadow into ``w``, and the shadow
        moved on by it, in one pass."""
        r = self.record
        state = private_api.ndarray_view(self.state)
        shadow = private_api.ndarray_view(self.shadow[group])
        out = codec.as_bytes(private_api.ndarray_view(w))
        wire_host.encode_change(state, shadow, out, r.bits, r.block, seq)

    def leaves(self, like: Any) -> List[Any]:
        if self.state is None:
            raise ValueError("its state was never set (no leader pushed to it)")
        shadows = [self.shadow[i] for i in self._groups()]
        return [self.state] + shadows + list(self._inner_leaves())

    def _inner_leaves(self) -> List[Any]:
        try:
            return self.inner.leaves(self.state)
        except ValueError:  # a rule that keeps no state (add)
            return []

    def loaded(self, count: int) -> None:
        self.inner.loaded(count)
        self.rounds = count if self.record.mode == "sync" else 0
        self.seq, self.resync, self.pending, self.pushed = {}, True, {}, {}


class WireKey(Rule):
    """A wire key of a compressed shard: pushes go to the state key's :class:`WireState`."""

    def update(self, g: Any, w: Any) -> None:
        base = self.rule_of(self.record.base)
        if not isinstance(base, WireState):
            raise ValueError(f"wire key {self.key}: key {self.record.base} is no compressed state")
        base.apply(self.record, g, w)


class WireRejoin(Rule):
    """A compressed shard's rejoin key: pushes go to the state key's :meth:`WireState.rejoin`."""

    def update(self, g: Any, w: Any) -> None:
        base = self.rule_of(self.record.base)
        if not isinstance(base, WireState):
            raise ValueError(
                f"rejoin key {self.key}: key {self.record.base} is no compressed state"
            )
        if base.record.n != self.record.n:
            raise ValueError(
                f"rejoin key {self.key} is for {self.record.n} elements, its shard has "
                f"{base.record.n}"
            )
        base.rejoin(g, w)


class Rounds(Rule):
    """A quorum's sync rounds (:class:`hvd_ps.ps.protocol.Rounds`): reports join the open
    round, which closes at a push once its quorum and grace allow; ``w`` is the record the
    leaders pull. ``now`` is the server's clock (a test's, in unit tests)."""

    def __init__(self, record: protocol.Rounds, key: int, rule_of: RuleOf) -> None:
        super().__init__(record, key, rule_of)
        import time

        self.now: Callable[[], float] = time.monotonic
        g, window = record.groups, record.window
        self.closed = 0
        self.placed = np.zeros(g, np.float32)  # the round each group's last report joined
        self.last = np.zeros(g, np.int64)  # each group's last reported seq
        self.open: Dict[int, int] = {}  # the open round's reports: group -> seq
        self.ring = np.zeros((window, g), np.float32)
        self.done: Set[int] = set()
        self.quorum_at: Optional[float] = None  # when the open round reached its quorum
        self.closes: List[float] = []

    def grace(self) -> Optional[float]:
        """Seconds the open round waits after its quorum (None: for every group)."""
        if self.record.grace >= 0.0:
            return float(self.record.grace)
        if len(self.closes) < 2:
            return None
        gaps = np.diff(self.closes[-(protocol.GRACE_HISTORY + 1) :])
        return float(protocol.GRACE_FRACTION * np.median(gaps))

    def update(self, g: Any, w: Any) -> None:
        r = self.record
        got = g.asnumpy().ravel()
        if got.size != r.size or w.size != r.size:
            raise ValueError(f"a rounds push of {got.size} elements to a key of {r.size}")
        kind, group, seq = (float(v) for v in got[:3])
        if not all(math.isfinite(v) and v == math.floor(v) for v in (kind, group, seq)):
            raise ValueError(f"a rounds push that is not whole numbers: {got[:3].tolist()}")
        kind_i, group_i, seq_i = int(kind), int(group), int(seq)
        if kind_i not in protocol.ROUND_KINDS:
            raise ValueError(f"a rounds push of kind {kind_i}")
        if not 0 <= group_i < r.groups:
            raise ValueError(f"group {group_i} is not one of the {r.groups} groups")
        if kind_i == protocol.ROUND_REPORT:
            self._report(group_i, seq_i)
        elif kind_i == protocol.ROUND_DONE:
            self.done.add(group_i)
        elif kind_i == protocol.ROUND_RESUME:
            self._resume(group_i, seq_i)
        if kind_i == protocol.ROUND_FLUSH:
            self._close()
        else:
            self._close_if_due()
        w[:] = self.view().reshape(w.shape)

    def _resume(self, group: int, seq: int) -> None:
        """A checkpoint was loaded: ``group``'s last exchange was ``seq`` (before it reports)."""
        if self.last[group] != 0 or group in self.open or group in self.done:
            raise ValueError(
                f"group {group} resumed at exchange {seq} after it reported exchange "
                f"{self.last[group]}"
            )
        if not 0 <= seq < 2**24:
            raise ValueError(f"group {group} resumed at exchange {seq}")
        self.last[group] = seq

    def _report(self, group: int, seq: int) -> None:
        if group in self.done:
            raise ValueError(f"group {group} reported exchange {seq} after it finished")
        if group in self.open:
            raise ValueError(f"group {group} reported twice in round {self.closed + 1}")
        if seq != self.last[group] + 1 or seq >= 2**24:
            raise ValueError(
                f"group {group} reported exchange {seq}, expected {self.last[group] + 1}"
            )
        self.last[group] = seq
        self.open[group] = seq
        self.placed[group] = self.closed + 1

    def _close_if_due(self) -> None:
        r = self.record
        live = r.groups - len(self.done)
        if not self.open:
            return
        quorum = min(r.quorum, live)
        if self.quorum_at is None and len(self.open) >= quorum:
            self.quorum_at = self.now()
        grace = self.grace()
        if len(self.open) >= live or (
            self.quorum_at is not None
            and grace is not None
            and self.now() - self.quorum_at >= grace
        ):
            self._close()

    def _close(self) -> None:
        """Close the open round, if any group reported in it."""
        if not self.open:
            return
        self.closed += 1
        row = self.ring[(self.closed - 1) % self.record.window]
        row[:] = 0.0
        for group, seq in self.open.items():
            row[group] = seq
        self.open, self.quorum_at = {}, None
        self.closes.append(self.now())
        del self.closes[: -(protocol.GRACE_HISTORY + 1)]

    def view(self) -> Any:
        """The record as the leaders pull it (the layout of the protocol's record)."""
        r, g = self.record, self.record.groups
        out = np.zeros(r.size, np.float32)
        grace = self.grace()
        head = protocol.ROUND_HEAD
        first = max(1, self.closed - r.window + 1)
        out[:head] = (self.closed, first, -1.0 if grace is None else grace, 0)
        out[head : head + g] = self.placed
        for group, seq in self.open.items():
            out[head + g + group] = seq
        out[head + 2 * g : head + 3 * g] = self.last
        out[head + 3 * g :] = self.ring.ravel()
        return out


def read_rounds(view: Any, groups: int, window: int) -> Tuple[int, int, Dict[int, Dict[int, int]]]:
    """A :class:`hvd_ps.ps.protocol.Rounds` record (float32, as pulled or pushed): rounds
    closed, the first round of the ring, and the members of each round the ring holds (round:
    group: seq). ValueError if it is not one (the wrong size, counts that are not whole)."""
    v = np.asarray(view, np.float32).ravel()
    if v.size != protocol.rounds_size(groups, window):
        raise ValueError(
            f"a rounds record of {v.size} elements, not {protocol.rounds_size(groups, window)}"
        )
    if not np.all(np.isfinite(v)) or not np.all(v[:2] == np.floor(v[:2])):
        raise ValueError("a rounds record whose counts are not whole numbers")
    closed, first = int(v[0]), int(v[1])
    if closed < 0 or first < 1 or first > max(1, closed) or closed - first >= window:
        raise ValueError(f"a rounds record of rounds {first} .. {closed} in a ring of {window}")
    ring = v[protocol.ROUND_HEAD + 3 * groups :].reshape(window, groups)
    members = {}
    for r in range(first, closed + 1):
        row = ring[(r - 1) % window]
        if not np.all(row == np.floor(row)) or np.any(row < 0):
            raise ValueError(f"round {r}'s members are not whole exchange numbers")
        members[r] = {g: int(s) for g, s in enumerate(row) if s > 0}
        if not members[r]:
            raise ValueError(f"round {r} has no members")
    return closed, first, members


class WireCommit(Rule):
    """A server's commit key of one trainer's quorum shards (:class:`hvd_ps.ps.protocol.
    WireCommit`): each shard applies the rounds the pushed record closed that it has not, then
    answers the leader that pushed it."""

    def update(self, g: Any, w: Any) -> None:
        r = self.record
        got = g.asnumpy()
        closed, first, members = read_rounds(got, r.groups, r.window)
        asker = float(got.ravel()[protocol.ROUND_HEAD - 1])
        if asker != math.floor(asker) or not 0 <= asker <= r.groups:
            raise ValueError(f"a commit for group {asker - 1:g}, not one of the {r.groups}")
        applied = []
        for base in r.bases:
            shard = self.rule_of(base)
            if not isinstance(shard, WireState) or shard.record.mode != "quorum":
                raise ValueError(f"commit key {self.key}: key {base} is no quorum shard")
            if shard.rounds + 1 < first and shard.rounds < closed:
                raise ValueError(
                    f"shard {base} applied {shard.rounds} rounds; the record starts at round "
                    f"{first}: the members of round {shard.rounds + 1} are lost"
                )
            for round_ in range(shard.rounds + 1, closed + 1):
                shard.commit(round_, members[round_])
            if asker > 0:
                shard.answer(int(asker) - 1)
            applied.append(shard.rounds)
        out = got.ravel().copy()
        out[0] = min(applied)  # the rounds this server's shards applied (all the same)
        w[:] = out.reshape(w.shape)


#: the rule class of each protocol record
RULES: Dict[Type[Any], Type[Rule]] = {
    protocol.Assign: Assign,
    protocol.Add: Add,
    protocol.Optimizer: Optimizer,
    protocol.Nesterov: Nesterov,
    protocol.Clock: Clock,
    protocol.CopyState: CopyState,
    protocol.WireState: WireState,
    protocol.WireKey: WireKey,
    protocol.WireRejoin: WireRejoin,
    protocol.Rounds: Rounds,
    protocol.WireCommit: WireCommit,
}


def make(record: protocol.Rule, key: int, rule_of: RuleOf) -> Rule:
    """The rule ``record`` sets for ``key``; ``rule_of`` finds the rules of other keys."""
    kind = RULES.get(type(record))
    if kind is None:
        raise ValueError(f"no update rule for {record!r}")
    return kind(record, key, rule_of)


def assign(received: Any, stored: Any) -> None:
    """``stored = received``; a row-sparse push replaces only the rows it holds.

    The server keeps a row-sparse key with every row present (its pulls read rows by index),
    so the result is written back with all rows.
    """
    if getattr(received, "stype", "default") != "row_sparse":
        stored[:] = received
        return
    import mxnet as mx

    dense = stored.tostype("default")
    if received.indices.shape[0]:
        dense[received.indices] = received.data
    rows = mx.nd.arange(stored.shape[0], dtype="int64")
    mx.nd.sparse.row_sparse_array((dense, rows), shape=stored.shape).copyto(stored)
