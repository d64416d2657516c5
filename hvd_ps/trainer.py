"""The Gluon trainer: Horovod allreduce inside a group, a sync strategy across groups.

Step semantics (the contract): a step counter ``t`` starts at 1. Every ``step()``

1. averages the gradients inside the group with Horovod allreduce on the group's process set
   (``horovod.mxnet.DistributedTrainer``, reused as is);
2. applies the local optimizer update (skipped under :class:`~hvd_ps.GradientPush`, where the
   servers own the update);
3. if ``t % period == 0``, the group's leader runs the strategy's PS exchange (fused buffers
   per dtype of at most ``HVD_PS_BUCKET_MB``) and broadcasts the resulting parameters to its group.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

from . import runtime
from .deadline import deadline
from .errors import ConfigError, HvdPsError
from .fusion import FusedBuffer, plan_buckets
from .strategies import Bucket, GradientPush, ModelAverage, Strategy

_trainers = 0


def broadcast_parameters(params: Any, root_rank: int = 0) -> None:
    """Make every rank's parameters equal to ``root_rank``'s (all ranks, all groups).

    The PS keys of a trainer are initialised from these values when the trainer takes its
    first step, so the centre / global model starts equal to every group's parameters.
    """
    rt = runtime.runtime()
    hvd.broadcast_parameters(params, root_rank=root_rank, prefix="hvd_ps.init.")
    arrays = []
    for p in params.values():
        try:
            arrays.append(p.data() if isinstance(p, mx.gluon.Parameter) else p)
        except mx.gluon.parameter.DeferredInitializationError:
            continue  # horovod broadcasts it when it is initialised
    _wait(arrays, f"broadcast of the initial parameters from rank {root_rank}", rt.cfg.timeout)


def _wait(arrays: List[Any], what: str, timeout: float) -> None:
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


class DistributedTrainer(hvd.DistributedTrainer):
    """A ``mx.gluon.Trainer`` for hvd_ps: group allreduce every step, PS exchange every
    ``sync.period`` steps (see the module docstring for the exact order).

    Args:
        params: the parameters to train (``net.collect_params()``).
        optimizer: the local optimizer (name or ``mx.optimizer.Optimizer``). Under
            ``GradientPush`` it runs on the servers instead and must be given by name with
            numeric ``optimizer_params``.
        optimizer_params: its arguments.
        sync: the strategy across groups; default ``ModelAverage(period=1)``.
        prefix: name prefix of this trainer's Horovod tensors (needed for several trainers).

    Example::

        trainer = hvd_ps.DistributedTrainer(net.collect_params(), 'sgd',
                                            {'learning_rate': 0.1},
                                            sync=hvd_ps.EASGD(period=4))
        ...
        trainer.step(batch_size)
        trainer.pull_global(net.collect_params())     # evaluate the centre
    """

    def __init__(
        self,
        params: Any,
        optimizer: Any,
        optimizer_params: Optional[Dict[str, Any]] = None,
        sync: Optional[Strategy] = None,
        prefix: Optional[str] = None,
    ) -> None:
        global _trainers
        rt = runtime.runtime()
        sync = ModelAverage(period=1) if sync is None else sync
        if not isinstance(sync, Strategy):
            raise ConfigError(f"sync must be a strategy such as hvd_ps.EASGD(...), got {sync!r}")
        sync.validate(rt.topo.num_groups)  # e.g. unstable sync EASGD: fail before any step
        if isinstance(sync, GradientPush):
            sync.optimizer = _server_optimizer(optimizer, optimizer_params)
        _trainers += 1
        self._hvdps_prefix = prefix if prefix is not None else f"hvd_ps{_trainers}."
        super().__init__(
            params,
            optimizer,
            optimizer_params=optimizer_params,
            prefix=self._hvdps_prefix,
            process_set=rt.topo.group,
        )
        self._rt = rt
        self._sync = sync
        self._t = 0
        self._buckets: Optional[List[Bucket]] = None
        self._bcast: List[Any] = []
        self._stats: Dict[str, float] = dict.fromkeys(
            ("allreduce_s", "update_s", "exchange_s", "compute_s"), 0.0
        )
        self._exchanges = 0
        self._last: Optional[float] = None

    # -- public -----------------------------------------------------------------------------
    @property
    def sync(self) -> Strategy:
        return self._sync

    @property
    def t(self) -> int:
        """Steps taken so far."""
        return self._t

    def step(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        """One training step; see the module docstring for the order of what happens."""
        enter = time.perf_counter()
        if self._last is not None:
            self._stats["compute_s"] += enter - self._last
        rescale = self._scale / batch_size
        self._check_and_rescale_grad(rescale)
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        self._setup()
        self._t += 1
        topo, timeout = self._rt.topo, self._rt.cfg.timeout

        self._allreduce_grads()
        grads = [g for b in self._all_buckets() for g in b.grads.arrays]
        _wait(grads, f"gradient allreduce in group {topo.group_id} (ranks {topo.members})", timeout)
        t1 = time.perf_counter()
        self._stats["allreduce_s"] += t1 - enter
        if self._sync.local_update:
            self._update(ignore_stale_grad)
        elif topo.is_leader:
            for b in self._all_buckets():
                b.grads.pack_axpby(b.out, rescale, 0.0, out=b.out)
        t2 = time.perf_counter()
        self._stats["update_s"] += t2 - t1
        if self._t % self._sync.period == 0:
            self._exchange()
        self._stats["exchange_s"] += time.perf_counter() - t2
        self._last = time.perf_counter()

    def pull_global(self, params: Any = None) -> None:
        """Load the global model (EASGD's centre, the averaged model, or the servers' weights)
        into the trainer's parameters on every rank of the calling group."""
        if params is not None:
            mine = {id(p) for p in self._params}
            given = params.values() if hasattr(params, "values") else params
            if any(id(p) not in mine for p in given):
                raise ConfigError("pull_global(params): params must be this trainer's parameters")
        self._setup()
        topo = self._rt.topo
        if topo.is_leader:
            client = self._client()
            for b in self._all_buckets():
                client.exchange(b.key, None, b.pulled, wait=False)
                b.params.unpack(b.pulled, alpha=self._sync.global_scale(topo.num_groups))
            client.wait([b.pulled for b in self._all_buckets()], "pull of the global model")
        self._group_broadcast("pull_global")

    @contextmanager
    def global_model(self) -> Iterator[None]:
        """Inside the block the parameters hold the global model; after it, the group's own.

        For evaluating the global model mid-training without disturbing local training (EASGD
        and async modes keep training from the local parameters). Collective over the group.

        Example::

            with trainer.global_model():
                acc = evaluate(net)
        """
        self._setup()
        saved = [b.params.pack() for b in self._all_buckets()]
        self.pull_global()
        try:
            yield
        finally:
            for b, flat in zip(self._all_buckets(), saved):
                b.params.unpack(flat)

    def stats(self) -> Dict[str, float]:
        """Counters: steps, exchanges, PS bytes, and seconds per phase of ``step()``.

        ``allreduce_s`` runs from the start of ``step()`` until the group's averaged gradients
        are ready, so it includes the tail of the backward pass MXNet still runs asynchronously;
        ``compute_s`` is the time between steps (the caller's forward/backward submission).
        """
        out: Dict[str, float] = {"steps": self._t, "exchanges": self._exchanges}
        client = self._rt.client
        out["bytes_pushed"] = client.stats.bytes_pushed if client else 0
        out["bytes_pulled"] = client.stats.bytes_pulled if client else 0
        out.update(self._stats)
        return out

    # -- internals --------------------------------------------------------------------------
    def _client(self) -> Any:
        client = self._rt.client
        if client is None:
            raise HvdPsError("this rank is not its group's leader and has no PS client")
        return client

    def _all_buckets(self) -> List[Bucket]:
        assert self._buckets is not None
        return self._buckets

    def _exchange(self) -> None:
        topo = self._rt.topo
        if topo.is_leader:
            client = self._client()
            # every bucket's transfers are queued on MXNet's engine first, so they overlap;
            # then one bounded wait for all of them
            for b in self._all_buckets():
                self._sync.exchange(b, client, topo.num_groups, self._wire)
            client.wait([b.pulled for b in self._all_buckets()], f"PS exchange at step {self._t}")
        self._exchanges += 1
        self._group_broadcast(f"exchange at step {self._t}")

    def _group_broadcast(self, why: str) -> None:
        """The leader's parameters to the rest of its group (one broadcast per fused buffer)."""
        topo = self._rt.topo
        if topo.group_size == 1:
            return
        for i, (b, flat) in enumerate(zip(self._all_buckets(), self._bcast)):
            if topo.is_leader:
                b.params.pack(out=flat)
            hvd.broadcast_(
                flat,
                root_rank=topo.leader,
                name=f"{self._hvdps_prefix}bcast.{i}",
                process_set=topo.group,
            )
        what = f"group {topo.group_id}: broadcast from leader rank {topo.leader} after {why}"
        _wait(self._bcast, what, self._rt.cfg.timeout)
        if not topo.is_leader:
            for b, flat in zip(self._all_buckets(), self._bcast):
                b.params.unpack(flat)

    @property
    def _wire(self) -> Optional[str]:
        return None if self._rt.cfg.wire_dtype == "float32" else self._rt.cfg.wire_dtype

    def _setup(self) -> None:
        """First step: fused buffers, cross-group checks, PS keys and updaters."""
        if self._buckets is not None:
            return
        topo, sync = self._rt.topo, self._sync
        trained = [p for p in self._params if p.grad_req != "null"]
        signature = (
            repr(sync),
            [(p.name, tuple(p.shape), np.dtype(p.dtype).name) for p in trained],
        )
        _check_same(
            hvd.allgather_object(signature, name=f"{self._hvdps_prefix}signature"),
            topo.groups,
        )
        sync.validate(topo.num_groups)
        # one fused buffer per dtype and at most HVD_PS_BUCKET_MB: one PS key each
        plan = plan_buckets([p.data() for p in trained], int(self._rt.cfg.bucket_mb * 2**20))
        buckets = []
        for idx in plan:
            ps = [trained[i] for i in idx]
            b = Bucket(FusedBuffer([p.data() for p in ps]), FusedBuffer([p.grad() for p in ps]))
            self._bcast.append(mx.nd.zeros((b.params.size,), dtype=b.params.dtype))
            buckets.append(b)
        if topo.is_leader:
            client = self._client()
            client.set_mode(sync.mode)
            wire = self._wire
            updater, uparams = sync.server_updater(topo.num_groups)
            for i, b in enumerate(buckets):
                initial = sync.initial(b, topo.num_groups, wire)
                name = f"{self._hvdps_prefix}{b.params.dtype.name}.{i}"
                b.key = client.register(name, initial, updater, uparams)
                b.out = mx.nd.zeros((b.params.size,), dtype=wire or b.params.dtype)
                b.pulled = mx.nd.zeros((b.params.size,), dtype=wire or b.params.dtype)
        self._buckets = buckets


def _server_optimizer(optimizer: Any, params: Optional[Dict[str, Any]]) -> tuple:
    """GradientPush runs the optimizer on the servers: it must travel as a name and numbers."""
    if not isinstance(optimizer, str):
        raise ConfigError(
            "optimizer: GradientPush runs the optimizer on the PS servers, so give it by name "
            f"(e.g. 'sgd'), not as {type(optimizer).__name__}"
        )
    args = dict(params or {})
    bad = [k for k, v in args.items() if not isinstance(v, (int, float, bool, type(None)))]
    if bad:
        raise ConfigError(f"optimizer_params {bad} must be numbers for GradientPush")
    return optimizer.lower(), args


def _check_same(signatures: List[Any], groups: List[List[int]]) -> None:
    """Every rank must train the same parameters (shapes, dtypes) with the same strategy."""
    ref_strategy, ref_params = signatures[0]
    for rank, (strategy, params) in enumerate(signatures):
        gid = next(i for i, g in enumerate(groups) if rank in g)
        where = f"rank {rank} (group {gid}) vs rank 0 (group 0)"
        if strategy != ref_strategy:
            raise HvdPsError(f"sync strategy differs: {where}: {strategy} vs {ref_strategy}")
        if len(params) != len(ref_params):
            raise HvdPsError(
                f"number of trained parameters differs: {where}: {len(params)} vs {len(ref_params)}"
            )
        for (n, s, d), (_rn, rs, rd) in zip(params, ref_params):
            if (s, d) != (rs, rd):
                raise HvdPsError(
                    f"parameter {n!r} differs across groups: {where}: shape {s} {d} vs "
                    f"{rs} {rd} (every group must train the same model)"
                )
