"""Checkpoints of a whole job: what ``trainer.save_checkpoint`` writes and ``load_checkpoint``
restores, so that a resumed run continues as if it had never stopped.

A front end hands its trainer over as a :class:`FrontEnd` (its parameters, its local optimizer's
state, its step counter, the object collectives of its Horovod); the schedule is seen only
through :meth:`~hvd_ps.train.core.schedule.Schedule.state`, ``restore``, ``flight_arrays``,
``state_arrays`` and ``companion_key``, and the servers' state through the rule's
``state_layout``.

A checkpoint in the format of :mod:`hvd_ps.checkpoint` (a manifest and shards of numpy arrays,
atomic, checksummed, no pickle): every group's leader writes one shard, ``group<g>``, with its
group's arrays and the PS keys it reads; global rank 0 then writes the manifest, which commits
the checkpoint. No array crosses Horovod, only the shards' entries (names, sizes, CRC-32s). Its
arrays, ``g`` a global group id, ``i`` a bucket (one PS key, in the trainer's bucket order):

=====================================  ===========================================================
array                                  what it is
=====================================  ===========================================================
``group<g>/param/<name>``              the group's parameters (equal on its members)
``group<g>/opt/<index>/<leaf>``        the local optimizer's state of parameter ``index``
``group<g>/start/<i>``                 DiLoCo: the group's ``x_start``
``group<g>/wire/<i>/<shadow|residual>``  a compressed wire: the leader's copy of the servers'
                                       state and its residual
``group<g>/flight/<i>/<snap|pulled|out>``  an overlapped exchange in flight: the snapshot
                                       ``x_t``, what the PS returned, what was pushed
``ps/<i>``                             the value of the PS key (the centre, the sum of a round,
                                       the servers' weights)
``ps/<i>/state/<leaf>``                the servers' state of the key: DiLoCo's outer momentum,
                                       GradientPush's optimizer state; on a compressed wire
                                       the state, the shadows and the rule's state of every
                                       shard of the bucket, laid end to end
=====================================  ===========================================================

The PS keys are shared out among the leaders by size (:func:`_owned`), so each leader pulls
and writes about ``1/G`` of the PS side. The arrays are written from the memory of their
NDArrays, without a copy (:func:`_view`); a leader writes its group's arrays while its pulls
of the PS keys are under way.

Its ``meta`` holds the strategy (its ``repr``), the groups, the parameters (names, shapes,
dtypes), the bucket plan, the wire dtype, the step counter, every group's exchange count, the
exchange in flight and the optimizers' update counts; ``load_checkpoint`` refuses a checkpoint
whose meta differs from the job with a :class:`~hvd_ps.errors.CheckpointError` naming what
differs. On load every rank reads its group's arrays from its group's shard, and the leader that
initialises the PS keys (ps-lite's rank 0) reads the PS side from every shard; each checks what
it reads against the manifest, and a refusal anywhere is raised on every rank.

Saving waits for an overlapped exchange in flight without applying it (it is applied at its
step after a resume, as without the stop) and for every leader's pushes (a barrier of the
leaders), so the PS state saved is the one every group would next see. With a quorum
(:mod:`hvd_ps.ps.rounds`) a late group's push may still wait on the servers, outside any round:
saving first closes the open round (every group has reported its exchanges by then) and has
the servers apply every round closed, so the state saved holds every push, and the run goes
on from there; the rounds key of a resumed run starts afresh from each group's exchanges. The
servers' state travels through companion keys (:class:`hvd_ps.ps.protocol.CopyState`).
"""

from __future__ import annotations

import ctypes
import itertools
from typing import Any, Dict, Iterator, List, Optional, Protocol, Set, Tuple

import mxnet as mx
import numpy as np

from ... import checkpoint, private_api
from ...deadline import deadline
from ...errors import CheckpointError
from ...ps import protocol
from .buckets import Bucket, plan_buckets
from .interfaces import Job, PSClient
from .schedule import Param, Schedule, State

#: an array in host memory, as a checkpoint reads and writes it
Host = np.ndarray[Any, Any]


class FrontEnd(Protocol):
    """What checkpoints need of a front end's trainer (the Gluon one: ``hvd_ps.train.gluon``)."""

    @property
    def job(self) -> Job: ...

    @property
    def schedule(self) -> Schedule: ...

    @property
    def step(self) -> int:
        """Steps taken so far."""
        ...

    def set_step(self, step: int) -> None: ...

    def setup(self, ps_initial: Optional[List[Any]] = None) -> None:
        """The trainer's first-step set-up (buckets, PS keys), with a checkpoint's PS values."""
        ...

    def parameters(self) -> List[Param]:
        """The trained parameters, in the trainer's order."""
        ...

    def set_parameters(self, values: Dict[str, Host]) -> None:
        """Set each trained parameter to its value by name."""
        ...

    def optimizer_arrays(self) -> Iterator[Tuple[str, Host]]:
        """The local optimizer's state as ``<index>/<leaf>`` and the array's memory."""
        ...

    def optimizer_counts(self) -> Dict[str, Any]:
        """The local optimizer's update counts (``opt_counts``, ``num_update``)."""
        ...

    def load_optimizer(self, saved: Dict[int, Dict[int, Host]], counts: Dict[str, Any]) -> None:
        """Set the local optimizer's state (index -> leaf -> array) and update counts."""
        ...

    def rank(self) -> int:
        """This process's global rank."""
        ...

    def allgather_object(self, obj: Any, name: str) -> List[Any]: ...

    def broadcast_object(self, obj: Any, name: str) -> Any:
        """Global rank 0's ``obj`` on every rank."""
        ...


_calls = itertools.count()


def _name(fe: FrontEnd, what: str) -> str:
    """A Horovod name of its own for each collective call (a name reused with another size
    confuses Horovod's response cache)."""
    return f"{fe.schedule.prefix}checkpoint.{what}.{next(_calls)}"


def _signature(fe: FrontEnd) -> Dict[str, Any]:
    """What a checkpoint must agree on with the job that loads it."""
    job, sched = fe.job, fe.schedule
    topo = job.topo
    trained = fe.parameters()
    index = {id(p.data): i for i, p in enumerate(trained)}
    out = {
        "strategy": repr(sched.sync),
        "groups": [len(g) for g in topo.groups],
        "total_groups": topo.total_groups,
        "group_offset": topo.global_group_id - topo.group_id,
        "params": [[p.name, list(p.data.shape), np.dtype(p.data.dtype).name] for p in trained],
        "wire": sched.wire_dtype,
    }
    if sched.wire_dtype in ("int8", "int4"):  # the blocks the codes were made in
        out["wire_block"] = job.cfg.settings.wire_block
    if sched.buckets is not None:
        out["buckets"] = [[index[id(a)] for a in b.params.arrays] for b in sched.all()]
    else:  # the plan the schedule will make (checked again once it has)
        out["buckets"] = plan_buckets([p.data for p in trained], sched.bucket_bytes)
    return out


def view(a: Any) -> Host:
    """The memory of a CPU NDArray as a numpy array, without a copy, once MXNet has written
    it. The caller keeps ``a`` alive, and unchanged, while it reads. Another front end's array
    (the PyTorch front end's parameters) is viewed through ``numpy.asarray``."""
    if not isinstance(a, mx.nd.NDArray):
        host: Host = np.asarray(a)
        return host
    a.wait_to_read()
    if a.stype != "default" or a.context.device_type != "cpu" or a.size == 0:
        copy: Host = a.asnumpy()
        return copy
    dtype = np.dtype(a.dtype)
    address = private_api.ndarray_address(a)
    memory = (ctypes.c_byte * (a.size * dtype.itemsize)).from_address(address)
    out: Host = np.frombuffer(memory, dtype=dtype).reshape(a.shape)
    return out


def _owned(fe: FrontEnd) -> Set[int]:
    """The buckets whose PS key this leader reads and writes: the largest first, each to the
    group with the fewest bytes so far (every leader computes the same split)."""
    topo = fe.job.topo
    load, mine = [0] * topo.num_groups, set()
    for size, i in sorted(
        (-b.params.size * b.params.dtype.itemsize, b.index) for b in fe.schedule.all()
    ):
        least = min(range(topo.num_groups), key=lambda n: (load[n], n))
        load[least] -= size
        if least == topo.group_id:
            mine.add(i)
    return mine


def _copy_states(sched: Schedule, rules: List[Tuple[Bucket, int, protocol.CopyState, Any]]) -> None:
    """Push once to each companion key (the servers copy the state in) and wait for it."""
    client = sched.client()
    pulled = []
    for b, leaf, rule, initial in rules:
        key = sched.companion_key(b, leaf, rule, initial)
        client.push(key, mx.nd.zeros(initial.shape, dtype=initial.dtype))
        out = mx.nd.zeros(initial.shape, dtype=initial.dtype)
        client.exchange(key, None, out, wait=False)
        pulled.append(out)
    client.wait(pulled, "checkpoint: copying the state into the servers")


def _pull_ps(fe: FrontEnd) -> List[Tuple[str, Any]]:
    """Leaders (collective): queue the pulls of this leader's keys (:func:`_owned`), their
    values and their servers' state, once every leader's pushes are applied."""
    sched = fe.schedule
    client, buckets, mine = sched.client(), sched.all(), _owned(fe)
    what = f"checkpoint: this leader's pushes to the {client.where}"
    with deadline(what, client.cfg.settings.timeout):
        mx.nd.waitall()  # a push is done once the servers answer (in sync mode: its round)
    client.barrier("checkpoint: every leader's pushes applied")
    out = []
    if sched.wire_io is not None:  # a compressed wire: the shards' state, bucket by bucket
        for b, ch in zip(buckets, sched.wire_io.channels):
            value = mx.nd.empty((b.params.size,), dtype="float32")
            leaves = [mx.nd.empty((b.params.size,), dtype="float32") for _ in range(ch.leaves())]
            ch.save_state(value, leaves, b.index in mine)
            if b.index in mine:
                out.append((f"ps/{b.index}", value))
                out += [(f"ps/{b.index}/state/{i}", a) for i, a in enumerate(leaves)]
        return out
    for b in buckets:
        if b.index in mine:
            value = mx.nd.empty(b.pulled.shape, dtype=b.pulled.dtype)
            client.exchange(b.key, None, value, wait=False)
            out.append((f"ps/{b.index}", value))
    for b in buckets:
        for leaf in range(len(sched.bound().rule.state_layout())):
            # one array per push: a later pull of the key writes into what was pushed last
            zeros = mx.nd.zeros(b.pulled.shape, dtype=b.pulled.dtype)
            key = sched.companion_key(b, leaf, protocol.CopyState(b.key, leaf), zeros)
            if b.index in mine or client.mode == "sync":  # a round waits for every leader
                client.push(key, zeros)
            if b.index in mine:
                state = mx.nd.empty(b.pulled.shape, dtype=b.pulled.dtype)
                client.exchange(key, None, state, wait=False)  # after the push: the copy
                out.append((f"ps/{b.index}/state/{leaf}", state))
    return out


def _leader_arrays(
    fe: FrontEnd, g: int, outs: Dict[str, Any], ps: List[Tuple[str, Any]]
) -> Iterator[Tuple[str, Any]]:
    """What the leader of group ``g`` writes, as views of the arrays (:func:`view`): its
    group's arrays (``outs``: what the exchange in flight pushed), then each PS array it
    pulls, once it has arrived."""
    sched = fe.schedule
    for name, a in sched.flight_arrays().items():
        yield f"group{g}/{name}", view(outs.get(name, a))
    for p in fe.parameters():
        yield f"group{g}/param/{p.name}", view(p.data)
    for name, a in fe.optimizer_arrays():
        yield f"group{g}/opt/{name}", a
    for name, a in sched.state_arrays().items():
        yield f"group{g}/{name}", view(a)
    client = sched.client()
    for name, a in ps:  # in the order queued: written while the later ones still arrive
        client.wait([a], f"checkpoint: reading {name} from the PS")
        yield name, view(a)


def _save_leader(fe: FrontEnd, path: str, g: int) -> Tuple[Any, Dict[str, Any], Optional[str]]:
    """A leader's part of a save: its shard's entry, its group's counters, or what failed."""
    sched = fe.schedule
    client = sched.client()
    flight = sched.flight_arrays()
    if flight:  # kept in flight: applied at its step after a resume
        sched.settle_flight()  # a compressed sync wire pulls its reply now
        client.wait([b.pulled for b in sched.all()], "checkpoint: the exchange in flight")
    state = sched.state()
    info = {"group": g, "exchanges": state.exchanges, **fe.optimizer_counts()}
    if sched.wire_io is not None:  # a quorum: no push left waiting on the servers
        closed = sched.wire_io.flush_rounds("checkpoint")
        if closed is not None:
            info["rounds"] = closed
    if state.period is not None:  # period='auto': each group's own schedule
        info.update(period=state.period, last_at=state.last_at, pending=state.pending)
        info["launched"] = state.launched
    # MXNet's dist KVStore pulls a key into the CPU array pushed to it last (its comm_buf_,
    # to save a copy), here what the exchange in flight pushed, which EASGD applies later
    pushed = {name: a for name, a in flight.items() if name.endswith("/out")}
    outs = {name: a.copy() for name, a in pushed.items()}
    ps = _pull_ps(fe)
    for name, a in pushed.items():
        outs[name].copyto(a)  # on MXNet's engine: after those pulls
    try:
        arrays = _leader_arrays(fe, g, outs, ps)
        return checkpoint.write_shard(path, f"group{g}", arrays), info, None
    except (OSError, CheckpointError) as err:
        client.wait([a for _, a in ps], "checkpoint: reading the PS keys")  # the others' rounds
        why = f"group {g}'s leader (rank {fe.rank()}) could not write {path}: {err}"
        return None, info, why


def save(fe: FrontEnd, path: str) -> None:
    """``trainer.save_checkpoint(path)``: collective; every leader writes its group's shard,
    then global rank 0 commits the manifest."""
    job, sched = fe.job, fe.schedule
    topo = job.topo
    fe.setup()
    entry, error, info = None, None, {}  # type: Tuple[Any, Optional[str], Dict[str, Any]]
    if topo.is_leader:
        entry, info, error = _save_leader(fe, path, topo.global_group_id)
    parts = fe.allgather_object((entry, info, error), _name(fe, "save"))
    error = next((e for _, _, e in parts if e), None)
    stale: List[str] = []
    if fe.rank() == 0 and error is None:
        groups = {str(i.pop("group")): i for _, i, _ in parts if i}
        state = sched.state()
        meta = dict(_signature(fe), step=fe.step, pending=state.pending, launched=state.launched)
        meta["mode"], meta["per_group"] = sched.sync.mode, groups
        try:
            stale = checkpoint.commit(path, [e for e, _, _ in parts if e], meta)
        except (OSError, CheckpointError) as err:
            error = f"writing the checkpoint {path} failed: {err}"
        checkpoint.retire(path, stale)  # the next save's spares (before any leader looks)
    error = fe.broadcast_object(error, _name(fe, "saved"))
    if error:
        if entry is not None:
            checkpoint.abandon(path, [entry["name"]])
        raise CheckpointError(error)


def _read_manifest(fe: FrontEnd, path: str) -> Dict[str, Any]:
    """Global rank 0 reads and checks the manifest; every rank gets it."""
    found: Any = None
    if fe.rank() == 0:
        try:
            found = checkpoint.read_manifest(path)
        except CheckpointError as err:
            found = str(err)
    found = fe.broadcast_object(found, _name(fe, "load"))
    if isinstance(found, str):
        raise CheckpointError(found)
    manifest: Dict[str, Any] = found
    return manifest


def _read_arrays(fe: FrontEnd, path: str, manifest: Dict[str, Any], g: int) -> Dict[str, Host]:
    """This rank's arrays: its group's, and the PS side if this rank initialises the PS keys
    (others get zeros of their shapes). A refusal on any rank is raised on every rank."""
    client: Optional[PSClient] = fe.job.client
    ps_reader = client is not None and client.ps_rank == 0
    arrays: Dict[str, Host] = {}
    error = None
    try:
        wanted: Dict[str, List[str]] = {}
        for shard in manifest["shards"]:
            for name, spec in shard["arrays"].items():
                if name.startswith(f"group{g}/") or (ps_reader and name.startswith("ps/")):
                    wanted.setdefault(shard["name"], []).append(name)
                elif name.startswith("ps/"):
                    arrays[name] = np.zeros(spec["shape"], dtype=spec["dtype"])
        for shard in manifest["shards"]:
            if shard["name"] in wanted:
                arrays.update(checkpoint.read_shard(path, shard, wanted[shard["name"]]))
        needed = [f"ps/{i}" for i in range(len(manifest["meta"]["buckets"]))]  # load() checked
        for name in [f"group{g}/param/{p.name}" for p in fe.parameters()] + needed:
            if name not in arrays:
                raise CheckpointError(f"{path} has no array {name!r}: it was altered")
    except CheckpointError as err:
        error = str(err)
    errors = fe.allgather_object(error, _name(fe, "read"))
    refused = next((e for e in errors if e), None)
    if refused:
        raise CheckpointError(refused)
    return arrays


def load(fe: FrontEnd, path: str) -> None:
    """``trainer.load_checkpoint(path)``: collective, before the trainer's first step."""
    job, sched = fe.job, fe.schedule
    topo = job.topo
    if sched.buckets is not None:
        raise CheckpointError(
            "load_checkpoint: call it before the trainer's first step (it sets the PS keys up)"
        )
    manifest = _read_manifest(fe, path)
    meta = manifest.get("meta") or {}
    for key, value in _signature(fe).items():
        checkpoint.expect(path, meta, key, value)
    g = topo.global_group_id
    arrays = _read_arrays(fe, path, manifest, g)
    fe.set_parameters({p.name: arrays[f"group{g}/param/{p.name}"] for p in fe.parameters()})
    mine = meta["per_group"][str(g)]
    fe.load_optimizer(_optimizer_arrays(arrays, g), mine)
    fe.setup([arrays[f"ps/{i}"] for i in range(len(meta["buckets"]))])
    checkpoint.expect(path, meta, "buckets", _signature(fe)["buckets"])
    fe.set_step(int(meta["step"]))
    if "period" in mine:  # period='auto': each group's own schedule
        own = State(int(mine["exchanges"]), mine["pending"], int(mine["launched"]),
                    int(mine["period"]), int(mine["last_at"]))  # fmt: skip
    else:
        own = State(int(mine["exchanges"]), meta["pending"], int(meta["launched"]))
    sched.restore(own)
    if topo.is_leader:
        _load_leader(fe, arrays, meta, g)


def _optimizer_arrays(arrays: Dict[str, Host], g: int) -> Dict[int, Dict[int, Host]]:
    """The local optimizer's saved state of group ``g``: parameter index -> leaf -> array."""
    prefix = f"group{g}/opt/"
    saved: Dict[int, Dict[int, Host]] = {}
    for name, a in arrays.items():
        if name.startswith(prefix):
            index_text, leaf_text = name[len(prefix) :].split("/")
            saved.setdefault(int(index_text), {})[int(leaf_text)] = a
    return saved


def _load_leader(fe: FrontEnd, arrays: Dict[str, Host], meta: Dict[str, Any], g: int) -> None:
    sched = fe.schedule
    own = {**sched.state_arrays(), **sched.flight_arrays()}
    for name, target in own.items():
        target[:] = mx.nd.array(arrays[f"group{g}/{name}"], dtype=target.dtype)
    per_group = meta["per_group"].values()
    rounds = [int(v["exchanges"]) for v in per_group]
    count = max(rounds) if meta["mode"] == "sync" else sum(rounds)
    closed = [int(v["rounds"]) for v in per_group if "rounds" in v]
    if closed:  # a quorum: the servers' rules applied one update per round closed
        count = max(closed)
    if sched.wire_io is not None:  # a compressed wire: the shards' state, bucket by bucket
        loaded = []
        for b, ch in zip(sched.all(), sched.wire_io.channels):
            values = [arrays[f"ps/{b.index}/state/{i}"] for i in range(ch.leaves())]
            loaded += ch.load_state(values, count)
        sched.client().wait(loaded, "checkpoint: copying the state into the servers")
        sched.wire_io.resume_rounds(int(meta["per_group"][str(g)]["exchanges"]))
        sched.client().barrier("checkpoint: every leader's copy of the servers' state loaded")
        return
    leaves = len(sched.bound().rule.state_layout())
    if not leaves:
        return
    rules = []
    for b in sched.all():
        for leaf in range(leaves):
            value = arrays[f"ps/{b.index}/state/{leaf}"]
            rule = protocol.CopyState(b.key, leaf, load=True, count=count)
            rules.append((b, leaf, rule, mx.nd.array(value, dtype=value.dtype)))
    _copy_states(sched, rules)
    # every leader copies the state in (the same values); in async mode nothing else orders
    # those copies before the other leaders' next pushes, and a late copy would undo a push
    # already applied: no leader trains on until every copy is in
    sched.client().barrier("checkpoint: every leader's copy of the servers' state loaded")
