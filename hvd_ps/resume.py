"""Checkpoints of a whole job: what ``trainer.save_checkpoint`` writes and ``load_checkpoint``
restores, so that a resumed run continues as if it had never stopped.

One file, written by global rank 0 in the format of :mod:`hvd_ps.checkpoint` (numpy arrays and
a JSON manifest, atomic, checksummed, no pickle). Its arrays, ``g`` a global group id, ``i`` a
bucket (one PS key, in the trainer's bucket order):

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

Its ``meta`` holds the strategy (its ``repr``), the groups, the parameters (names, shapes,
dtypes), the bucket plan, the wire dtype, the step counter, every group's exchange count, the
exchange in flight and the optimizers' update counts; ``load_checkpoint`` refuses a file whose
meta differs from the job with a :class:`~hvd_ps.errors.CheckpointError` naming what differs.

Saving waits for an overlapped exchange in flight without applying it (it is applied at its
step after a resume, as without the stop) and for every leader's pushes (a barrier of the
leaders), so the PS state saved is the one every group would next see. The servers' state
travels through companion keys (:class:`hvd_ps.protocol.CopyState`).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Tuple

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

from . import checkpoint, gluon_members, protocol
from .errors import CheckpointError

_calls = itertools.count()


def _name(tr: Any, what: str) -> str:
    """A Horovod name of its own for each collective call (a name reused with another size
    confuses Horovod's response cache)."""
    return f"{tr._sched.prefix}checkpoint.{what}.{next(_calls)}"


def _trained(tr: Any) -> List[Any]:
    return [p for p in gluon_members.trained_params(tr) if p.grad_req != "null"]


def _signature(tr: Any) -> Dict[str, Any]:
    """What a checkpoint must agree on with the job that loads it."""
    rt, sched = tr._rt, tr._sched
    topo = rt.topo
    trained = _trained(tr)
    index = {id(p): i for i, p in enumerate(trained)}
    return {
        "strategy": repr(tr.sync),
        "groups": [len(g) for g in topo.groups],
        "total_groups": topo.total_groups,
        "group_offset": topo.global_group_id - topo.group_id,
        "params": [[p.name, list(p.shape), np.dtype(p.dtype).name] for p in trained],
        "buckets": [[index[id(a)] for a in _bucket_params(tr, b)] for b in sched.all()],
        "wire": rt.cfg.wire_dtype,
    }


def _bucket_params(tr: Any, b: Any) -> List[Any]:
    by_array = {id(p.data()): p for p in _trained(tr)}
    return [by_array[id(a)] for a in b.params.arrays]


def _server_leaves(rule: protocol.Rule) -> int:
    """How many state arrays the servers keep per key under ``rule``."""
    if isinstance(rule, protocol.Nesterov):
        return 1
    if isinstance(rule, protocol.Optimizer):
        opt = mx.optimizer.create(rule.name, **rule.args)
        return len(protocol.state_leaves(opt.create_state(0, mx.nd.zeros((1,)))))
    return 0


def _state_key(tr: Any, b: Any, leaf: int, rule: protocol.CopyState, initial: Any) -> int:
    """The companion key of bucket ``b``'s server state ``leaf``, set to ``rule``."""
    sched, client = tr._sched, tr._sched.client()
    keys = sched.state_keys
    if (b.index, leaf) not in keys:
        name = f"{sched.prefix}state.{b.index}.{leaf}"
        keys[(b.index, leaf)] = client.register(name, initial, rule)
    else:
        client.command(keys[(b.index, leaf)], rule)
    return keys[(b.index, leaf)]


def _copy_states(tr: Any, rules: List[Tuple[Any, int, protocol.CopyState, Any]]) -> List[Any]:
    """Push once to each companion key (the servers copy the state) and pull it back."""
    client = tr._sched.client()
    pulled = []
    for b, leaf, rule, initial in rules:
        key = _state_key(tr, b, leaf, rule, initial)
        client.push(key, mx.nd.zeros(initial.shape, dtype=initial.dtype))
        out = mx.nd.zeros(initial.shape, dtype=initial.dtype)
        client.exchange(key, None, out, wait=False)
        pulled.append(out)
    client.wait(pulled, "checkpoint: copying the servers' state")
    return pulled


def _read_ps(tr: Any) -> Dict[str, np.ndarray]:
    """Leaders (collective): every key's value and server state, once no push is pending."""
    sched = tr._sched
    client, buckets = sched.client(), sched.all()
    scratch = [mx.nd.zeros(b.pulled.shape, dtype=b.pulled.dtype) for b in buckets]
    for b, s in zip(buckets, scratch):
        client.exchange(b.key, None, s, wait=False)  # ordered after this leader's pushes
    client.wait(scratch, "checkpoint: this leader's pushes")
    client.barrier("checkpoint: every leader's pushes applied")
    for b, s in zip(buckets, scratch):
        client.exchange(b.key, None, s, wait=False)
    client.wait(scratch, "checkpoint: reading the PS keys")
    out = {f"ps/{b.index}": s.asnumpy() for b, s in zip(buckets, scratch)}
    leaves = _server_leaves(sched.bound().rule)
    rules = [
        (b, leaf, protocol.CopyState(b.key, leaf), mx.nd.zeros_like(b.pulled))
        for b in buckets
        for leaf in range(leaves)
    ]
    for (b, leaf, _, _), value in zip(rules, _copy_states(tr, rules)):
        out[f"ps/{b.index}/state/{leaf}"] = value.asnumpy()
    return out


def save(tr: Any, path: str) -> None:
    """``trainer.save_checkpoint(path)``: collective; global rank 0 writes ``path``."""
    rt, sched = tr._rt, tr._sched
    topo = rt.topo
    tr._setup()
    buckets, run = sched.all(), sched.bound()
    g = topo.global_group_id
    mine: Dict[str, np.ndarray] = {}
    info: Dict[str, Any] = {}
    if topo.is_leader:
        client = sched.client()
        if sched.pending is not None:  # kept in flight: applied at its step after a resume
            client.wait([b.pulled for b in buckets], "checkpoint: the exchange in flight")
            for b in buckets:
                for part in ("snap", "pulled", "out"):
                    mine[f"group{g}/flight/{b.index}/{part}"] = getattr(b, part).asnumpy()
        for p in _trained(tr):
            mine[f"group{g}/param/{p.name}"] = p.data().asnumpy()
        updater = gluon_members.local_updater(tr)
        for index, state in updater.states.items():
            for leaf, a in enumerate(protocol.state_leaves(state)):
                mine[f"group{g}/opt/{index}/{leaf}"] = a.asnumpy()
        if hasattr(run, "starts"):
            for i, start in enumerate(run.starts()):
                mine[f"group{g}/start/{i}"] = start.asnumpy()
        counts = gluon_members.update_counts(tr.optimizer)
        info = {
            "group": g,
            "exchanges": sched.exchanges,
            "opt_counts": {str(k): int(v) for k, v in counts.items()},
            "num_update": int(tr.optimizer.num_update),
        }
        ps = _read_ps(tr)
        if client.ps_rank == 0:
            mine.update(ps)
    parts = hvd.allgather_object((mine, info), name=_name(tr, "save"))
    error = None
    if hvd.rank() == 0:
        arrays: Dict[str, np.ndarray] = {}
        groups: Dict[str, Any] = {}
        for part, part_info in parts:
            arrays.update(part)
            if part_info:
                groups[str(part_info.pop("group"))] = part_info
        meta = dict(_signature(tr), step=tr.t, pending=sched.pending, launched=sched.launched)
        meta["mode"], meta["per_group"] = tr.sync.mode, groups
        try:
            checkpoint.write(path, arrays, meta)
        except (OSError, CheckpointError) as err:
            error = f"writing the checkpoint {path} failed: {err}"
    error = hvd.broadcast_object(error, root_rank=0, name=_name(tr, "saved"))
    if error:
        raise CheckpointError(error)


def _read_everywhere(tr: Any, path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Global rank 0 reads and checks the file; every rank gets its contents."""
    found: Any = None
    if hvd.rank() == 0:
        try:
            found = checkpoint.read(path)
        except CheckpointError as err:
            found = str(err)
    found = hvd.broadcast_object(found, root_rank=0, name=_name(tr, "load"))
    if isinstance(found, str):
        raise CheckpointError(found)
    return found


def load(tr: Any, path: str) -> None:
    """``trainer.load_checkpoint(path)``: collective, before the trainer's first step."""
    rt, sched = tr._rt, tr._sched
    topo = rt.topo
    if sched.buckets is not None:
        raise CheckpointError(
            "load_checkpoint: call it before the trainer's first step (it sets the PS keys up)"
        )
    arrays, meta = _read_everywhere(tr, path)
    trained = _trained(tr)
    want = {
        "strategy": repr(tr.sync),
        "groups": [len(g) for g in topo.groups],
        "total_groups": topo.total_groups,
        "group_offset": topo.global_group_id - topo.group_id,
        "params": [[p.name, list(p.shape), np.dtype(p.dtype).name] for p in trained],
        "wire": rt.cfg.wire_dtype,
    }
    for key, value in want.items():
        checkpoint.expect(path, meta, key, value)
    g = topo.global_group_id
    for p in trained:
        p.set_data(mx.nd.array(arrays[f"group{g}/param/{p.name}"], dtype=p.dtype))
    _load_local_optimizer(tr, arrays, meta, g)
    ps_initial = [arrays[f"ps/{i}"] for i in range(len(meta["buckets"]))]
    tr._setup(ps_initial)
    checkpoint.expect(path, meta, "buckets", _signature(tr)["buckets"])
    mine = meta["per_group"][str(g)]
    tr._t, sched.exchanges = int(meta["step"]), int(mine["exchanges"])
    sched.pending, sched.launched = meta["pending"], int(meta["launched"])
    if sched.pending is not None:
        rt.in_flight[id(sched)] = sched
    if topo.is_leader:
        _load_leader(tr, arrays, meta, g)


def _load_local_optimizer(tr: Any, arrays: Dict[str, np.ndarray], meta: Dict[str, Any], g: int):
    opt, updater = tr.optimizer, gluon_members.local_updater(tr)
    prefix = f"group{g}/opt/"
    saved: Dict[int, Dict[int, np.ndarray]] = {}
    for name, a in arrays.items():
        if name.startswith(prefix):
            index_text, leaf_text = name[len(prefix) :].split("/")
            saved.setdefault(int(index_text), {})[int(leaf_text)] = a
    trained = gluon_members.trained_params(tr)
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
    gluon_members.set_update_counts(opt, {int(k): v for k, v in mine["opt_counts"].items()})
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
