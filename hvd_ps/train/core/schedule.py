"""When a trainer's group meets the PS tier: blocking or overlapped exchanges, the group
broadcast that follows them, and the global model.

Blocking (``overlap=0``): at step ``t`` with ``t % period == 0`` the leader runs the strategy's
exchange for every bucket, waits once for all of them, and broadcasts the result to its group.

Overlapped (``overlap=tau >= 1``): at step ``t`` the leader packs a snapshot ``x_t`` of every
bucket (into a buffer allocated once) and queues the exchange from it on MXNet's engine without
waiting; the whole group trains on. At step ``t + tau`` the leader waits for the exchange
(bounded by ``HVD_PS_TIMEOUT``), applies it to the current parameters and broadcasts them.
Every rank knows from the step counter when an exchange is in flight, so members never wait for
the PS. Before any push the leader checks that what it would push is finite
(:mod:`hvd_ps.train.core.finite`); a NaN or inf is refused, nothing is pushed, and every rank of the
group raises :class:`~hvd_ps.errors.NonFiniteError` at the group broadcast that follows (for an
overlapped exchange: the one at step ``t + tau``). ``pull_global()``, ``global_model()`` and
``hvd_ps.shutdown()`` first complete an exchange still in flight (wait, apply, broadcast) at
that call, so its result is never lost.

A job whose groups rejoin a shared tier after dying (:mod:`hvd_ps.ps.roster`; async only) does
not start from its own parameters: at set-up each leader pulls every key's current value (the
centre, the servers' weights), the strategy makes it the group's model
(:meth:`~hvd_ps.train.core.exchanges.Exchange.rejoin`) and the leader broadcasts it to the group.

Sync-round safety: the next push of a key happens ``period`` steps after the previous one and
after the wait for the previous exchange (``tau < period``), and in sync mode that wait returns
only once the previous round closed, so a leader never pushes a key twice in one round.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple

import mxnet as mx

from ...deadline import deadline
from ...errors import ConfigError, HvdPsError, NonFiniteError
from ...ps import protocol
from ...ps.clock import Clock
from . import finite
from .buckets import Bucket, plan_buckets
from .fusion import FusedBuffer
from .interfaces import Flat, Fuse, Group, Job, PSClient
from .strategies import Exchange, ServerOptimizer, Strategy
from .wire_exchange import Wire

#: how many of its last local steps a group's pace is the median of
PACE_WINDOW = 8


def wait_arrays(arrays: List[Any], what: str, timeout: float) -> None:
    """Wait for Horovod work on ``arrays``; a stall becomes an HvdPsError naming ``what``."""
    with deadline(what, timeout):
        try:
            for a in arrays:
                a.wait_to_read()
        except mx.base.MXNetError as err:
            # MXNet puts its C++ traceback first and the cause on the last line
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            cause = lines[-1] if lines else type(err).__name__
            raise HvdPsError(f"{what} failed: {cause}") from None


def _fused(arrays: List[Any], threads: int) -> Flat:
    """MXNet arrays as one flat buffer: the fused op (the Gluon front end's)."""
    return FusedBuffer(arrays, threads=threads)


@dataclass(frozen=True)
class Param:
    """A trained parameter as a front end hands it to the core: its name and its data and
    gradient arrays (MXNet NDArrays on the CPU, which the fused op and the PS client take)."""

    name: str
    data: Any
    grad: Any


@dataclass(frozen=True)
class State:
    """A schedule's counters, as a checkpoint keeps them (:meth:`Schedule.state`)."""

    #: exchanges this group has started
    exchanges: int
    #: the step at which the exchange in flight is applied (None: none in flight)
    pending: Optional[int]
    #: the step the exchange in flight started at
    launched: int
    #: ``period='auto'``: the group's local steps until its next exchange, and the step of
    #: its last exchange (None: the strategy's fixed schedule)
    period: Optional[int] = None
    last_at: int = 0


class Schedule:
    """The fused buckets of one trainer and the exchanges of its group with the PS tier."""

    def __init__(
        self,
        rt: Job,
        sync: Strategy,
        prefix: str,
        optimizer: Optional[ServerOptimizer] = None,
        wire_dtype: Optional[str] = None,
        bucket_mb: Optional[float] = None,
        fuse: Optional[Fuse] = None,
        group: Optional[Group] = None,
    ) -> None:
        self.rt = rt
        #: how the front end's parameter and gradient arrays become flat buffers
        self.fuse: Fuse = fuse or _fused
        #: the front end's broadcast in the group (None: no group broadcast is possible)
        self.group = group
        settings = rt.cfg.settings
        #: the dtype of PS traffic and the largest bucket (MB): the trainer's, else the
        #: environment's (``HVD_PS_WIRE_DTYPE``, ``HVD_PS_BUCKET_MB``)
        self.wire_dtype = settings.wire_dtype if wire_dtype is None else wire_dtype
        self.bucket_mb = settings.bucket_mb if bucket_mb is None else bucket_mb
        self.sync = sync
        self.prefix = prefix
        self.optimizer = optimizer  # GradientPush: the servers' optimizer (name, numbers)
        self.run: Optional[Exchange] = None  # the strategy bound to this job, at setup
        #: checkpoints: the companion key of each (bucket, server-state array), and the rule
        #: it was last given (a save resends only a change)
        self._companions: Dict[Tuple[int, int], Tuple[int, protocol.CopyState]] = {}
        self.buckets: Optional[List[Bucket]] = None
        self.bcast: List[Any] = []  # one broadcast buffer per bucket
        self.saved: List[Any] = []  # global_model(): the local parameters, allocated once
        self.peek: List[Any] = []  # global_model(local=True): the pulls, allocated once
        self.pending: Optional[int] = None  # step at which the exchange in flight is applied
        self.launched = 0  # step the exchange in flight started at
        self.refused: Optional[str] = None  # overlap: why the exchange in flight was not pushed
        self.status: Any = None  # 1 element broadcast with the buckets: 1 = the leader refused
        self.exchanges = 0
        self.ps_wait_s = 0.0
        #: the compressed wire's buckets (leaders of an int8/int4 trainer), else None
        self.wire_io: Optional[Wire] = None
        #: an async leader's group clock (staleness, ``max_staleness``), else None
        self.clock: Optional[Clock] = None
        #: the group's local steps between exchanges now (``period='auto'`` changes it at
        #: every exchange), the step of its last exchange, and what its leader picked for
        #: the next one (sent to the group with the exchange's broadcast)
        self.period = sync.base_period
        self.last_at = 0
        self.period_next = self.period
        #: the group's last seconds per local step, between two calls of on_step
        self.step_times: Deque[float] = deque(maxlen=PACE_WINDOW)
        self._left_at: Optional[float] = None

    @property
    def wire(self) -> Optional[str]:
        return None if self.wire_dtype == "float32" else self.wire_dtype

    @property
    def bucket_bytes(self) -> int:
        return int(self.bucket_mb * 2**20)

    def all(self) -> List[Bucket]:
        if self.buckets is None:
            raise HvdPsError("the trainer has no fused buffers yet (it has not taken a step)")
        return self.buckets

    def bound(self) -> Exchange:
        if self.run is None:
            raise HvdPsError("the trainer's strategy is not bound yet (it has not taken a step)")
        return self.run

    def client(self) -> PSClient:
        client = self.rt.client
        if client is None:
            raise HvdPsError("this rank is not its group's leader and has no PS client")
        return client

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> State:
        """The counters a checkpoint keeps."""
        auto = self.sync.adaptive
        period = self.period if auto else None
        return State(self.exchanges, self.pending, self.launched, period, self.last_at)

    def restore(self, state: State) -> None:
        """Continue from a checkpoint's counters (after :meth:`setup`); an exchange that was in
        flight is applied at its step, as without the stop."""
        self.exchanges, self.pending, self.launched = state.exchanges, state.pending, state.launched
        if self.sync.adaptive and state.period is not None:
            self.period = self.period_next = state.period
            self.last_at = state.last_at
        if self.pending is not None:
            self.rt.in_flight.add(self)
            if self.wire_io is not None:
                self.wire_io.pulled = True  # a checkpoint holds the reply in the copy it saved

    def flight_arrays(self) -> Dict[str, Any]:
        """A leader's arrays of the exchange in flight, by name (``flight/<i>/<part>``): the
        snapshot ``x_t``, what the PS returned, what was pushed. Empty if none is in flight."""
        if self.pending is None:
            return {}
        out = {}
        for b in self.all():
            for part, a in (("snap", b.snap), ("pulled", b.pulled), ("out", b.out)):
                out[f"flight/{b.index}/{part}"] = a
        return out

    def state_arrays(self) -> Dict[str, Any]:
        """The arrays the strategy's exchange keeps between exchanges (DiLoCo's ``x_start``),
        by name (``start/<i>``); on a compressed wire also each bucket's copy of the servers'
        state and residual (``wire/<i>/shadow``, ``wire/<i>/residual``)."""
        out = dict(self.bound().state_arrays())
        if self.wire_io is not None:
            out.update(self.wire_io.state_arrays(self.all()))
        return out

    def settle_flight(self) -> None:
        """Leader, compressed sync wire: pull the reply of the exchange in flight now (a
        checkpoint keeps it; it is applied at its step as before)."""
        if self.wire_io is None or self.pending is None:
            return
        if self.refused is not None:  # nothing was pushed
            self.wire_io.pulled = True
            return
        self.wire_io.settle_flight(self.exchanges)

    def companion_key(self, b: Bucket, leaf: int, rule: protocol.CopyState, initial: Any) -> int:
        """The PS key that carries bucket ``b``'s server-state array ``leaf`` to or from the
        servers (checkpoints), set to ``rule``: registered on first use, commanded again only
        when the rule changes."""
        client = self.client()
        known = self._companions.get((b.index, leaf))
        if known is None:
            key = client.register(f"{self.prefix}state.{b.index}.{leaf}", initial, rule)
        else:
            key = known[0]
            if known[1] != rule:
                client.command(key, rule)
        self._companions[(b.index, leaf)] = (key, rule)
        return key

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, trained: List[Param], ps_initial: Optional[List[Any]] = None) -> None:
        """Fused buffers, per-bucket scratch (allocated once), PS keys and updaters.

        ``trained``: the trained parameters as a front end hands them over (name, data array,
        gradient array). ``ps_initial`` (a checkpoint's, one flat array per bucket) replaces
        the keys' initial values the strategy would compute from the parameters."""
        topo, sync, wire = self.rt.topo, self.sync, self.wire
        if self.rt.rejoined and sync.mode == "sync":
            err = ConfigError(
                f"group {topo.global_group_id} rejoined the PS tier, but {sync!r} runs in sync "
                "mode, whose rounds need every group from the start: only async groups can "
                "rejoin (restart every job of a sync run, e.g. from a checkpoint)"
            )
            err.every_rank = True
            raise err
        run = self.run = sync.bind(topo.total_groups, wire, self.optimizer)
        plan = plan_buckets([p.data for p in trained], self.bucket_bytes)
        threads = self.rt.cfg.settings.fusion_threads
        buckets = []
        for i, idx in enumerate(plan):
            ps = [trained[j] for j in idx]
            params = self.fuse([p.data for p in ps], threads)
            grads = self.fuse([p.grad for p in ps], threads)
            b = Bucket(i, params, grads, names=[p.name for p in ps])
            self.bcast.append(mx.nd.zeros((b.params.size,), dtype=b.params.dtype))
            buckets.append(b)
        if topo.is_leader:
            client = self.client()
            client.set_mode(sync.mode, rounds=not run.bits)
            if run.bits:
                self.wire_io = Wire(client, sync.mode, run.bits, run.quorum)
            for b in buckets:
                initial = run.initial(b)
                if ps_initial is not None:
                    initial = mx.nd.array(ps_initial[b.index], dtype=initial.dtype)
                name = f"{self.prefix}{b.params.dtype.name}.{b.index}"
                # a compressed wire encodes float32 whatever the parameters' dtype
                out_dtype = "float32" if run.bits else run.wire or b.params.dtype
                b.out = mx.nd.zeros((b.params.size,), dtype=out_dtype)
                if self.wire_io is not None:
                    ch = self.wire_io.open(
                        name, initial, run.rule, topo.total_groups, topo.global_group_id
                    )
                    b.pulled, b.key = ch.shadow, ch.state_keys[0]
                    if client.rejoined:
                        ch.rejoin()
                else:
                    b.pulled = mx.nd.zeros((b.params.size,), dtype=run.wire or b.params.dtype)
                    b.key = client.register(name, initial, run.rule, out=b.pulled)
                if client.rejoined:  # start from the PS's state, not from our x0
                    run.rejoin(b)
                if sync.overlap:
                    b.snap = mx.nd.zeros((b.params.size,), dtype=b.params.dtype)
                    b.snap_buf = FusedBuffer([b.snap], threads=threads)
        if self.wire_io is not None:
            self.wire_io.start(self.prefix)
        if topo.is_leader and sync.mode == "async":
            self.clock = self.client().clock(f"{self.prefix}clock", sync.max_staleness)
        self.status = mx.nd.zeros((2,))  # the leader refused (1); the next period
        self.buckets = buckets
        if self.rt.rejoined:
            self.group_broadcast("rejoining the PS tier (the model it holds)")

    # -- training steps -------------------------------------------------------------------------
    def on_step(self, t: int) -> None:
        """After step ``t``'s local update: apply an exchange due now, start one if due."""
        now = time.perf_counter()
        if self._left_at is not None:  # a local step: from the end of the last call to now
            self.step_times.append(now - self._left_at)
        if self.pending == t:
            self.complete(f"the exchange started at step {self.launched}, applied at step {t}")
        if self.due(t):
            if self.sync.overlap:
                self.launch(t)
            else:
                self.blocking(t)
        self._left_at = time.perf_counter()

    def due(self, t: int) -> bool:
        """Whether step ``t`` starts an exchange: every ``period`` steps, or (``period=
        'auto'``) the group's current period after its last exchange."""
        if self.sync.adaptive:
            return t >= self.last_at + self.period
        return t % self.period == 0

    def pace(self) -> float:
        """This group's seconds per local step: the median of its last steps (0: none yet)."""
        return statistics.median(self.step_times) if self.step_times else 0.0

    def _prepare(self, t: int) -> None:
        """Leader, before the push of step ``t``: the wait of ``max_staleness`` (async), and
        with ``period='auto'`` the push's weight (its local steps over the base period) and
        the group's next period."""
        if self.clock is not None:
            self.clock.gate(f"the PS exchange at step {t}")
        s, run = self.sync, self.bound()
        if not s.adaptive:
            return
        run.weight = (t - self.last_at) / s.base_period
        if self.clock is not None:
            assert s.min_period is not None and s.max_period is not None
            self.period_next = self.clock.period(
                s.base_period, s.min_period, s.max_period, self.pace()
            )

    def _replan(self, step: int) -> None:
        """Every rank, after the broadcast that follows the exchange of ``step``: the next
        period, as the leader picked it."""
        if not self.sync.adaptive:
            return
        if self.rt.topo.is_leader or self.rt.topo.group_size == 1:
            period = self.period_next
        else:
            period = int(round(float(self.status.asnumpy()[1])))
        self.period, self.last_at = period, step

    def blocking(self, t: int) -> None:
        topo = self.rt.topo
        refused = None
        if topo.is_leader:
            client = self.client()
            refused = self._refusal(t, None)
        if topo.is_leader and refused is None:
            self._prepare(t)
        if topo.is_leader and refused is None and self.wire_io is not None:
            seq, what = self.exchanges + 1, f"PS exchange at step {t}"
            self._wire_push(seq, True)
            self._wire_finish(client, seq, what, True)
        elif topo.is_leader and refused is None:
            # every bucket's transfers are queued on MXNet's engine first, so they overlap;
            # then one bounded wait for all of them
            for b in self.all():
                self.bound().exchange(b, client)
            self._wait_ps(client, f"PS exchange at step {t}")
        if topo.is_leader and refused is None and self.clock is not None:
            self.clock.tick(self.pace())
        self.exchanges += 1
        self.group_broadcast(f"exchange at step {t}", refused, t)
        self._replan(t)

    def launch(self, t: int) -> None:
        """Start the exchange from a snapshot of the parameters; nobody waits."""
        topo = self.rt.topo
        if topo.is_leader:
            client = self.client()
            for b in self.all():
                b.params.pack(out=b.snap)
            self.refused = self._refusal(t, [b.snap for b in self.all()])
            if self.refused is None:
                self._prepare(t)
            if self.wire_io is not None:
                self.wire_io.pulled = False
                if self.refused is None:
                    self._wire_push(self.exchanges + 1, False)
            for b in self.all() if self.refused is None and self.wire_io is None else []:
                self.bound().launch(b, client)
        self.pending = t + self.sync.overlap
        self.launched = t
        self.rt.in_flight.add(self)
        self.exchanges += 1

    def complete(self, why: str) -> None:
        """Wait for the exchange in flight, apply it, broadcast the parameters. No-op if none."""
        if self.pending is None:
            return
        self.pending = None
        self.rt.in_flight.discard(self)
        topo = self.rt.topo
        refused, self.refused = self.refused, None
        if topo.is_leader and refused is None and self.wire_io is not None:
            what = f"PS exchange started at step {self.launched}"
            self._wire_finish(self.client(), self.exchanges, what, False)
        elif topo.is_leader and refused is None:
            client = self.client()
            self._wait_ps(client, f"PS exchange started at step {self.launched}")
            for b in self.all():
                self.bound().apply(b)
        if topo.is_leader and refused is None and self.clock is not None:
            self.clock.tick(self.pace())
        self.group_broadcast(why, refused, self.launched)
        self._replan(self.launched)

    def _refusal(self, t: int, flats: Optional[List[Any]]) -> Optional[str]:
        """Leader: why the push of step ``t`` must not happen (NaN or inf), or None. ``flats``:
        the snapshots; None for a blocking exchange, which checks the pushed gradients
        (GradientPush) or the parameters, packed into the broadcast buffers."""
        buckets = self.all()
        if flats is not None:
            what = "the parameters (the snapshot of the overlapped exchange)"
        elif not self.sync.local_update:  # GradientPush: b.out holds the gradients to push
            flats, what = [b.out for b in buckets], "the group-mean gradients"
        else:
            for b, flat in zip(buckets, self.bcast):
                b.params.pack(out=flat)
            flats, what = self.bcast, "the parameters"
        topo = self.rt.topo
        why = finite.refusal(buckets, flats, t, what)
        if why is None:
            return None
        return f"group {topo.global_group_id} (leader rank {topo.leader}), {why}"

    def _wait_ps(self, client: PSClient, what: str) -> None:
        start = time.perf_counter()
        client.wait([b.pulled for b in self.all()], what)
        self.ps_wait_s += time.perf_counter() - start

    def _wire_push(self, seq: int, blocking: bool) -> None:
        """The compressed wire's push of exchange ``seq`` (queued); a quorum's wait there for
        the round of this leader's previous push counts as PS wait."""
        assert self.wire_io is not None
        start = time.perf_counter()
        self.wire_io.push(self.bound(), self.all(), seq, blocking)
        self.ps_wait_s += time.perf_counter() - start

    def _wire_finish(self, client: PSClient, seq: int, what: str, blocking: bool) -> None:
        """The compressed wire's end of exchange ``seq``; all of it counts as PS wait (a sync
        round's barrier or quorum, the pulls), though the strategy's apply is queued only."""
        assert self.wire_io is not None
        start = time.perf_counter()

        def wait(what: str) -> None:
            client.wait([b.pulled for b in self.all()], what)

        self.wire_io.finish(self.bound(), self.all(), seq, what, blocking, wait)
        self.ps_wait_s += time.perf_counter() - start

    # -- the global model -----------------------------------------------------------------------
    def pull_global(self) -> None:
        """The global model into the parameters of every rank of the group (collective)."""
        self.complete("pull_global (completing the exchange in flight first)")
        topo = self.rt.topo
        if topo.is_leader:
            client = self.client()
            scale = self.bound().global_scale
            if self.wire_io is not None:
                self.wire_io.read_global(self.all(), self._peek(), scale)
                client.wait(self.peek, "pull of the global model")
            else:
                for b in self.all():
                    client.exchange(b.key, None, b.pulled, wait=False)
                    b.params.unpack(b.pulled, alpha=scale)
                client.wait([b.pulled for b in self.all()], "pull of the global model")
        self.group_broadcast("pull_global")

    def pull_global_here(self) -> None:
        """This leader alone (no collective): the PS's value of every key into its own
        parameters. An exchange in flight stays in flight, untouched: the pulls go to buffers
        of their own, and what it pushed is kept (MXNet's KVStore pulls a key into the array
        pushed to it last)."""
        client = self.client()
        scale = self.bound().global_scale
        if self.wire_io is not None:  # the pushes and pulls of an exchange in flight stay
            self.wire_io.read_global(self.all(), self._peek(), scale)
            client.wait(self.peek, "pull of the global model (this leader alone)")
            return
        self._peek()
        pushed = [b.out.copy() for b in self.all()] if self.pending is not None else []
        for b, flat in zip(self.all(), self.peek):
            client.exchange(b.key, None, flat, wait=False)
            b.params.unpack(flat, alpha=scale)
        for b, out in zip(self.all(), pushed):
            out.copyto(b.out)  # on MXNet's engine: after those pulls
        client.wait(self.peek, "pull of the global model (this leader alone)")

    def _peek(self) -> List[Any]:
        """Buffers of the global model's pulls (allocated once)."""
        if not self.peek:
            self.peek = [mx.nd.zeros(b.pulled.shape, dtype=b.pulled.dtype) for b in self.all()]
        return self.peek

    def save_local(self, complete: bool = True) -> None:
        """Copy the local parameters aside (into buffers allocated on first use), after
        completing an exchange in flight (``complete``)."""
        if complete:
            self.complete("global_model (completing the exchange in flight first)")
        if not self.saved:
            self.saved = [mx.nd.zeros((b.params.size,), dtype=b.params.dtype) for b in self.all()]
        for b, flat in zip(self.all(), self.saved):
            b.params.pack(out=flat)

    def restore_local(self) -> None:
        for b, flat in zip(self.all(), self.saved):
            b.params.unpack(flat)

    def group_broadcast(self, why: str, refused: Optional[str] = None, step: int = 0) -> None:
        """The leader's parameters to the rest of its group (one broadcast per fused buffer),
        with one status element: if the leader ``refused`` the push of ``step``, every rank of
        the group raises a NonFiniteError here (the leader's names the parameters)."""
        topo = self.rt.topo
        if topo.group_size == 1:
            if refused is not None:
                raise NonFiniteError(refused)
            return
        if self.group is None:
            raise HvdPsError("the trainer's schedule has no group broadcast (Schedule(group=))")
        if topo.is_leader:
            self.status[:] = mx.nd.array([0.0 if refused is None else 1.0, self.period_next])
            for b, flat in zip(self.all(), self.bcast):
                b.params.pack(out=flat)
        names = [f"{self.prefix}status"] + [
            f"{self.prefix}bcast.{i}" for i in range(len(self.bcast))
        ]
        what = f"group {topo.group_id}: broadcast from leader rank {topo.leader} after {why}"
        self.group.broadcast([self.status] + self.bcast, topo.leader, names, what)
        if refused is not None:
            raise NonFiniteError(refused)
        if not topo.is_leader and float(self.status.asnumpy()[0]) != 0.0:
            err = NonFiniteError(
                f"group {topo.global_group_id} (leader rank {topo.leader}), step {step}: the "
                "leader refused to push NaN or inf to the PS tier (its message names the "
                f"parameters): {finite.ADVICE}"
            )
            err.reporter = topo.leader  # the leader's line says it all
            raise err
        if not topo.is_leader:
            for b, flat in zip(self.all(), self.bcast):
                b.params.unpack(flat)

    def stats(self) -> Dict[str, float]:
        clock = self.clock
        return {
            "exchanges": self.exchanges,
            "ps_wait_s": self.ps_wait_s,
            "period": self.period,
            "max_staleness_seen": clock.max_seen if clock is not None else 0,
            "staleness_wait_s": clock.wait_s if clock is not None else 0.0,
            **self.quorum_stats(),
        }

    def quorum_stats(self) -> Dict[str, float]:
        """A quorum trainer's leader: its pushes that were late, answered before the round they
        joined closed (``late_pushes``), and its seconds waiting for rounds to close
        (``quorum_wait_s``); 0 elsewhere."""
        rounds = None if self.wire_io is None else self.wire_io.rounds
        if rounds is None:
            return {"late_pushes": 0, "quorum_wait_s": 0.0}
        return rounds.stats()
