"""Checkpoints of a whole job: what ``trainer.save_checkpoint`` writes and ``load_checkpoint``
restores, so that a resumed run continues as if it had never stopped.

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
``group<g>/flight/<i>/<snap|pulled|out>``  an overlapped exchange in flight: the snapshot
                                       ``x_t``, what the PS returned, what was pushed
``ps/<i>``                             the value of the PS key (the centre, the sum of a round,
                                       the servers' weights)
``ps/<i>/state/<leaf>``                the servers' state of the key: DiLoCo's outer momentum,
                                       GradientPush's optimizer state
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
leaders), so the PS state saved is the one every group would next see. The servers' state
travels through companion keys (:class:`hvd_ps.ps.protocol.CopyState`).
"""

from __future__ import annotations

import ctypes
import itertools
import weakref
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

from ... import checkpoint, private_api
from ...deadline import deadline
from ...errors import CheckpointError
from ...ps import protocol
from .exchanges import plan_buckets

_calls = itertools.count()
#: the rule each companion key was last given, per schedule (a save resends only a change)
_rules: weakref.WeakKeyDictionary[Any, Dict[int, protocol.CopyState]]
_rules = weakref.WeakKeyDictionary()


def _name(tr: Any, what: str) -> str:
    """A Horovod name of its own for each collective call (a name reused with another size
    confuses Horovod's response cache)."""
    return f"{tr._sched.prefix}checkpoint.{what}.{next(_calls)}"


def _trained(tr: Any) -> List[Any]:
    return [p for p in private_api.trained_params(tr) if p.grad_req != "null"]


def _signature(tr: Any) -> Dict[str, Any]:
    """What a checkpoint must agree on with the job that loads it."""
    rt, sched = tr._rt, tr._sched
    topo = rt.topo
    trained = _trained(tr)
    index = {id(p): i for i, p in enumerate(trained)}
    out = {
        "strategy": repr(tr.sync),
        "groups": [len(g) for g in topo.groups],
        "total_groups": topo.total_groups,
        "group_offset": topo.global_group_id - topo.group_id,
        "params": [[p.name, list(p.shape), np.dtype(p.dtype).name] for p in trained],
        "wire": rt.cfg.wire_dtype,
    }
    if sched.buckets is not None:
        out["buckets"] = [[index[id(a)] for a in _bucket_params(tr, b)] for b in sched.all()]
    else:  # the plan the schedule will make (checked again once it has)
        max_bytes = int(rt.cfg.bucket_mb * 2**20)
        out["buckets"] = plan_buckets([p.data() for p in trained], max_bytes)
    return out


def _bucket_params(tr: Any, b: Any) -> List[Any]:
    by_array = {id(p.data()): p for p in _trained(tr)}
    return [by_array[id(a)] for a in b.params.arrays]


def _view(a: Any) -> np.ndarray:
    """The memory of a CPU NDArray as a numpy array, without a copy, once MXNet has written
    it (``MXNDArrayGetData``). The caller keeps ``a`` alive, and unchanged, while it reads."""
    a.wait_to_read()
    if a.stype != "default" or a.context.device_type != "cpu" or a.size == 0:
        return a.asnumpy()
    ptr = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(a.handle, ctypes.byref(ptr)))
    dtype = np.dtype(a.dtype)
    memory = (ctypes.c_byte * (a.size * dtype.itemsize)).from_address(ptr.value)
    return np.frombuffer(memory, dtype=dtype).reshape(a.shape)


def _owned(tr: Any) -> Set[int]:
    """The buckets whose PS key this leader reads and writes: the largest first, each to the
    group with the fewest bytes so far (every leader computes the same split)."""
    topo, load, mine = tr._rt.topo, [0] * tr._rt.topo.num_groups, set()
    for size, i in sorted(
        (-b.params.size * b.params.dtype.itemsize, b.index) for b in tr._sched.all()
    ):
        least = min(range(topo.num_groups), key=lambda n: (load[n], n))
        load[least] -= size
        if least == topo.group_id:
            mine.add(i)
    return mine


def _server_leaves(rule: protocol.Rule) -> int:
    """How many state arrays the servers keep per key under ``rule``."""
    if isinstance(rule, protocol.Nesterov):
        return rule.leaves
    if isinstance(rule, protocol.Optimizer):
        opt = mx.optimizer.create(rule.name, **rule.args)
        return len(protocol.state_leaves(opt.create_state(0, mx.nd.zeros((1,)))))
    return 0


def _state_key(tr: Any, b: Any, leaf: int, rule: protocol.CopyState, initial: Any) -> int:
    """The companion key of bucket ``b``'s server state ``leaf``, set to ``rule``."""
    sched, client = tr._sched, tr._sched.client()
    keys, sent = sched.state_keys, _rules.setdefault(sched, {})
    if (b.index, leaf) not in keys:
        name = f"{sched.prefix}state.{b.index}.{leaf}"
        keys[(b.index, leaf)] = client.register(name, initial, rule)
    elif sent.get(keys[(b.index, leaf)]) != rule:
        client.command(keys[(b.index, leaf)], rule)
    sent[keys[(b.index, leaf)]] = rule
    return keys[(b.index, leaf)]


def _copy_states(tr: Any, rules: List[Tuple[Any, int, protocol.CopyState, Any]]) -> None:
    """Push once to each companion key (the servers copy the state in) and wait for it."""
    client = tr._sched.client()
    pulled = []
    for b, leaf, rule, initial in rules:
        key = _state_key(tr, b, leaf, rule, initial)
        client.push(key, mx.nd.zeros(initial.shape, dtype=initial.dtype))
        out = mx.nd.zeros(initial.shape, dtype=initial.dtype)
        client.exchange(key, None, out, wait=False)
        pulled.append(out)
    client.wait(pulled, "checkpoint: copying the state into the servers")


def _pull_ps(tr: Any) -> List[Tuple[str, Any]]:
    """Leaders (collective): queue the pulls of this leader's keys (:func:`_owned`), their
    values and their servers' state, once every leader's pushes are applied."""
    sched = tr._sched
    client, buckets, mine = sched.client(), sched.all(), _owned(tr)
    what = f"checkpoint: this leader's pushes to the {client.where}"
    with deadline(what, client.cfg.timeout):
        mx.nd.waitall()  # a push is done once the servers answer (in sync mode: its round)
    client.barrier("checkpoint: every leader's pushes applied")
    out = []
    for b in buckets:
        if b.index in mine:
            value = mx.nd.empty(b.pulled.shape, dtype=b.pulled.dtype)
            client.exchange(b.key, None, value, wait=False)
            out.append((f"ps/{b.index}", value))
    for b in buckets:
        for leaf in range(_server_leaves(sched.bound().rule)):
            # one array per push: a later pull of the key writes into what was pushed last
            zeros = mx.nd.zeros(b.pulled.shape, dtype=b.pulled.dtype)
            key = _state_key(tr, b, leaf, protocol.CopyState(b.key, leaf), zeros)
            if b.index in mine or client.mode == "sync":  # a round waits for every leader
                client.push(key, zeros)
            if b.index in mine:
                state = mx.nd.empty(b.pulled.shape, dtype=b.pulled.dtype)
                client.exchange(key, None, state, wait=False)  # after the push: the copy
                out.append((f"ps/{b.index}/state/{leaf}", state))
    return out


def _leader_arrays(
    tr: Any, g: int, outs: List[Any], ps: List[Tuple[str, Any]]
) -> Iterator[Tuple[str, Any]]:
    """What the leader of group ``g`` writes, as views of the NDArrays (:func:`_view`): its
    group's arrays (``outs``: what the exchange in flight pushed), then each PS array it
    pulls, once it has arrived."""
    sched = tr._sched
    for b, out in zip(sched.all(), outs):
        for part in ("snap", "pulled"):
            yield f"group{g}/flight/{b.index}/{part}", _view(getattr(b, part))
        yield f"group{g}/flight/{b.index}/out", _view(out)
    for p in _trained(tr):
        yield f"group{g}/param/{p.name}", _view(p.data())
    for index, state in private_api.local_updater(tr).states.items():
        for leaf, a in enumerate(protocol.state_leaves(state)):
            yield f"group{g}/opt/{index}/{leaf}", _view(a)
    run = sched.bound()
    if hasattr(run, "starts"):
        for i, start in enumerate(run.starts()):
            yield f"group{g}/start/{i}", _view(start)
    for name, a in ps:  # in the order queued: written while the later ones still arrive
        sched.client().wait([a], f"checkpoint: reading {name} from the PS")
        yield name, _view(a)


def _save_leader(tr: Any, path: str, g: int) -> Tuple[Any, Dict[str, Any], Optional[str]]:
    """A leader's part of a save: its shard's entry, its group's counters, or what failed."""
    sched = tr._sched
    client = sched.client()
    if sched.pending is not None:  # kept in flight: applied at its step after a resume
        client.wait([b.pulled for b in sched.all()], "checkpoint: the exchange in flight")
    counts = private_api.update_counts(tr.optimizer)
    info = {
        "group": g,
        "exchanges": sched.exchanges,
        "opt_counts": {str(k): int(v) for k, v in counts.items()},
        "num_update": int(tr.optimizer.num_update),
    }
    # MXNet's dist KVStore pulls a key into the CPU array pushed to it last (its comm_buf_,
    # to save a copy), here what the exchange in flight pushed, which EASGD applies later
    outs = [b.out.copy() for b in sched.all()] if sched.pending is not None else []
    ps = _pull_ps(tr)
    for b, out in zip(sched.all(), outs):
        out.copyto(b.out)  # on MXNet's engine: after those pulls
    try:
        arrays = _leader_arrays(tr, g, outs, ps)
        return checkpoint.write_shard(path, f"group{g}", arrays), info, None
    except (OSError, CheckpointError) as err:
        client.wait([a for _, a in ps], "checkpoint: reading the PS keys")  # the others' rounds
        return None, info, f"group {g}'s leader (rank {hvd.rank()}) could not write {path}: {err}"


def save(tr: Any, path: str) -> None:
    """``trainer.save_checkpoint(path)``: collective; every leader writes its group's shard,
    then global rank 0 commits the manifest."""
    rt, sched = tr._rt, tr._sched
    topo = rt.topo
    tr._setup()
    entry, error, info = None, None, {}  # type: Tuple[Any, Optional[str], Dict[str, Any]]
    if topo.is_leader:
        entry, info, error = _save_leader(tr, path, topo.global_group_id)
    parts = hvd.allgather_object((entry, info, error), name=_name(tr, "save"))
    error = next((e for _, _, e in parts if e), None)
    stale: List[str] = []
    if hvd.rank() == 0 and error is None:
        groups = {str(i.pop("group")): i for _, i, _ in parts if i}
        meta = dict(_signature(tr), step=tr.t, pending=sched.pending, launched=sched.launched)
        meta["mode"], meta["per_group"] = tr.sync.mode, groups
        try:
            stale = checkpoint.commit(path, [e for e, _, _ in parts if e], meta)
        except (OSError, CheckpointError) as err:
            error = f"writing the checkpoint {path} failed: {err}"
        checkpoint.retire(path, stale)  # the next save's spares (before any leader looks)
    error = hvd.broadcast_object(error, root_rank=0, name=_name(tr, "saved"))
    if error:
        if entry is not None:
            checkpoint.abandon(path, [entry["name"]])
        raise CheckpointError(error)


def _read_manifest(tr: Any, path: str) -> Dict[str, Any]:
    """Global rank 0 reads and checks the manifest; every rank gets it."""
    found: Any = None
    if hvd.rank() == 0:
        try:
            found = checkpoint.read_manifest(path)
        except CheckpointError as err:
            found = str(err)
    found = hvd.broadcast_object(found, root_rank=0, name=_name(tr, "load"))
    if isinstance(found, str):
        raise CheckpointError(found)
    return found


def _read_arrays(tr: Any, path: str, manifest: Dict[str, Any], g: int) -> Dict[str, np.ndarray]:
    """This rank's arrays: its group's, and the PS side if this rank initialises the PS keys
    (others get zeros of their shapes). A refusal on any rank is raised on every rank."""
    client = tr._rt.client
    ps_reader = client is not None and client.ps_rank == 0
    arrays: Dict[str, np.ndarray] = {}
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
        for name in [f"group{g}/param/{p.name}" for p in _trained(tr)] + needed:
            if name not in arrays:
                raise CheckpointError(f"{path} has no array {name!r}: it was altered")
    except CheckpointError as err:
        error = str(err)
    errors = hvd.allgather_object(error, name=_name(tr, "read"))
    refused = next((e for e in errors if e), None)
    if refused:
        raise CheckpointError(refused)
    return arrays


def load(tr: Any, path: str) -> None:
    """``trainer.load_checkpoint(path)``: collective, before the trainer's first step."""
    rt, sched = tr._rt, tr._sched
    topo = rt.topo
    if sched.buckets is not None:
        raise CheckpointError(
            "load_checkpoint: call it before the trainer's first step (it sets the PS keys up)"
        )
    manifest = _read_manifest(tr, path)
    meta = manifest.get("meta") or {}
    for key, value in _signature(tr).items():
        checkpoint.expect(path, meta, key, value)
    g = topo.global_group_id
    arrays = _read_arrays(tr, path, manifest, g)
    for p in _trained(tr):
        p.set_data(mx.nd.array(arrays[f"group{g}/param/{p.name}"], dtype=p.dtype))
    _load_local_optimizer(tr, arrays, meta, g)
    tr._setup([arrays[f"ps/{i}"] for i in range(len(meta["buckets"]))])
    checkpoint.expect(path, meta, "buckets", _signature(tr)["buckets"])
    mine = meta["per_group"][str(g)]
    tr._t, sched.exchanges = int(meta["step"]), int(mine["exchanges"])
    sched.pending, sched.launched = meta["pending"], int(meta["launched"])
    if sched.pending is not None:
        rt.in_flight[id(sched)] = sched
    if topo.is_leader:
        _load_leader(tr, arrays, meta, g)


def _load_local_optimizer(tr: Any, arrays: Dict[str, np.ndarray], meta: Dict[str, Any], g: int):
    opt, updater = tr.optimizer, private_api.local_updater(tr)
    prefix = f"group{g}/opt/"
    saved: Dict[int, Dict[int, np.ndarray]] = {}
    for name, a in arrays.items():
        if name.startswith(prefix):
            index_text, leaf_text = name[len(prefix) :].split("/")
            saved.setdefault(int(index_text), {})[int(leaf_text)] = a
    trained = private_api.trained_params(tr)
    for i, leaves in saved.items():
        state = opt.create_state_multi_precision(i, trained[i].data())
        have = protocol.state_leaves(state)
        if len(have) != len(leaves):
            raise CheckpointError(
                f"the local optimizer keeps {len(have)} state arrays for parameter {i}, "
                f"the checkpoint {len(leaves)}: resume with the optimizer it was saved with"
            )
        for n, a in enumerate(have):
            a[:] = mx.nd.array(leaves[n], dtype=a.dtype)
        updater.states[i] = state
        updater.states_synced[i] = True
    mine = meta["per_group"][str(g)]
    private_api.set_update_counts(opt, {int(k): v for k, v in mine["opt_counts"].items()})
    opt.num_update = int(mine["num_update"])


def _load_leader(tr: Any, arrays: Dict[str, np.ndarray], meta: Dict[str, Any], g: int) -> None:
    sched = tr._sched
    buckets, run = sched.all(), sched.bound()
    if hasattr(run, "starts"):
        for i, start in enumerate(run.starts()):
            start[:] = mx.nd.array(arrays[f"group{g}/start/{i}"], dtype=start.dtype)
    if sched.pending is not None:
        for b in buckets:
            for part in ("snap", "pulled", "out"):
                target = getattr(b, part)
                saved = arrays[f"group{g}/flight/{b.index}/{part}"]
                target[:] = mx.nd.array(saved, dtype=target.dtype)
    leaves = _server_leaves(run.rule)
    if not leaves:
        return
    per_group = meta["per_group"].values()
    rounds = [int(v["exchanges"]) for v in per_group]
    count = max(rounds) if meta["mode"] == "sync" else sum(rounds)
    rules = []
    for b in buckets:
        for leaf in range(leaves):
            value = arrays[f"ps/{b.index}/state/{leaf}"]
            rule = protocol.CopyState(b.key, leaf, load=True, count=count)
            rules.append((b, leaf, rule, mx.nd.array(value, dtype=value.dtype)))
    _copy_states(tr, rules)
