"""The Gluon trainer: Horovod allreduce inside a group, a sync strategy across groups.

Step semantics (the contract): a step counter ``t`` starts at 1. Every ``step()``

1. averages the gradients inside the group with Horovod allreduce on the group's process set
   (``horovod.mxnet.DistributedTrainer``, reused as is);
2. applies the local optimizer update (skipped under :class:`~hvd_ps.GradientPush`, where the
   servers own the update);
3. if ``t % period == 0``, the group's leader runs the strategy's PS exchange (fused buffers
   per dtype of at most ``HVD_PS_BUCKET_MB``) and broadcasts the resulting parameters to its
   group; with ``overlap=tau`` it only starts the exchange then, and applies and broadcasts it
   after the local update of step ``t + tau`` (:mod:`hvd_ps.train.core.schedule`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

from .. import private_api
from ..errors import ConfigError, same_on_every_rank
from . import calls, runtime
from . import trainer_checks as checks
from .core import resume
from .core.buckets import Bucket
from .core.schedule import Param, Schedule, wait_arrays
from .core.strategies import Strategy
from .gluon_checkpoint import GluonCheckpoint

_trainers = 0


def broadcast_parameters(params: Any, root_rank: int = 0) -> None:
    """Make every rank's parameters equal to ``root_rank``'s (all ranks, all groups).

    The PS keys of a trainer are initialised from these values when the trainer takes its
    first step, so the centre / global model starts equal to every group's parameters.
    """
    with calls.call("hvd_ps.broadcast_parameters"):
        rt = runtime.runtime()
        hvd.broadcast_parameters(params, root_rank=root_rank, prefix="hvd_ps.init.")
        arrays = []
        for p in params.values():
            try:
                arrays.append(p.data() if isinstance(p, mx.gluon.Parameter) else p)
            except mx.gluon.parameter.DeferredInitializationError:
                continue  # horovod broadcasts it when it is initialised
        _wait(
            arrays,
            f"broadcast of the initial parameters from rank {root_rank}",
            rt.cfg.settings.timeout,
        )


_wait = wait_arrays


class HorovodGroup:
    """The group's broadcast through horovod.mxnet (:class:`hvd_ps.train.core.interfaces.Group`)."""

    def __init__(self, process_set: Any, timeout: float) -> None:
        self.process_set = process_set
        self.timeout = timeout

    def broadcast(self, arrays: List[Any], root: int, names: List[str], what: str) -> None:
        for a, name in zip(arrays, names):
            hvd.broadcast_(a, root_rank=root, name=name, process_set=self.process_set)
        _wait(arrays, what, self.timeout)


class DistributedTrainer(hvd.DistributedTrainer):  # type: ignore[misc]  # no stubs
    """A ``mx.gluon.Trainer`` for hvd_ps: group allreduce every step, PS exchange every
    ``sync.period`` steps (see the module docstring for the exact order).

    It takes every argument of ``horovod.mxnet.DistributedTrainer`` (0.28.1), with the same
    meaning inside the group, so a Horovod script ports by adding ``sync=``.

    Args:
        params: the parameters to train (``net.collect_params()``).
        optimizer: the local optimizer (name or ``mx.optimizer.Optimizer``). Under
            ``GradientPush`` it runs on the servers instead and must be given by name with
            numeric ``optimizer_params``.
        optimizer_params: its arguments.
        compression: Horovod's gradient compression (``hvd.Compression.none`` / ``.fp16``) of
            the group allreduce. The PS exchange is not compressed by it: what crosses to the
            servers is decompressed, in ``HVD_PS_WIRE_DTYPE`` (GradientPush pushes the
            decompressed group-mean gradient).
        gradient_predivide_factor: as in Horovod, gradients are scaled by ``1/f`` before the
            group's sum and by ``f/group_size`` after it (also in a group of one rank, where
            Horovod itself would leave the gradients scaled by ``f``); the group mean, and so
            every PS exchange, is unchanged.
        prefix: name prefix of this trainer's Horovod tensors (needed for several trainers);
            also prefixes its PS key names.
        num_groups: as in Horovod, the group allreduce runs as this many grouped allreduces
            (0: one per parameter). It does not change the PS exchange, whose fused buckets
            follow ``HVD_PS_BUCKET_MB``. (Not the number of hvd_ps groups: that is
            ``hvd_ps.num_groups()``.)
        process_set: the allreduce's process set. In hvd_ps it is always this rank's group
            (``hvd_ps.group()``); leave it out, or pass that set (or ``hvd.global_process_set``
            when the only group is the whole world). Anything else is a ConfigError.
        sync: the strategy across groups (keyword only); default ``ModelAverage(period=1)``
            (an exchange every step; global rank 0 says so on stderr).
        wire: this trainer's PS wire (keyword only; default: ``HVD_PS_WIRE_DTYPE``, else
            float32): ``'float32'``, ``'float16'``, or the compressed ``'int8'`` and
            ``'int4'`` (blockwise scaled codes with error feedback in both directions, about
            0.26x and 0.13x the bytes of float32; see the wire formats in the docs). The
            servers keep float32 state whatever the wire.
        wire_dtype: the same as ``wire`` (its older name; give one of them).
        bucket_mb: the largest fused buffer (one PS key) in MB (keyword only; default:
            ``HVD_PS_BUCKET_MB``, else 4; 0: one key per dtype). Several keys let their
            transfers overlap.

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
        compression: Any = hvd.Compression.none,
        gradient_predivide_factor: float = 1.0,
        prefix: Optional[str] = None,
        num_groups: int = 0,
        process_set: Any = None,
        *,
        sync: Optional[Strategy] = None,
        wire: Optional[str] = None,
        wire_dtype: Optional[str] = None,
        bucket_mb: Optional[float] = None,
    ) -> None:
        global _trainers
        rt = runtime.runtime()
        with same_on_every_rank():  # the script's arguments: one line per job
            example = "DistributedTrainer(params, 'sgd', {...}, sync=hvd_ps.EASGD(4))"
            horovod = (compression, gradient_predivide_factor, num_groups, process_set)
            sync = checks.strategy_and_horovod_args(
                "DistributedTrainer", example, rt.topo, sync, horovod
            )
            # GradientPush runs the optimizer on the servers; the strategy value stays the user's
            server_opt = (
                checks.server_optimizer(optimizer, optimizer_params)
                if sync.server_optimizer
                else None
            )
        _trainers += 1
        self._hvdps_prefix = prefix if prefix is not None else f"hvd_ps{_trainers}."
        super().__init__(
            params,
            optimizer,
            optimizer_params=optimizer_params,
            compression=compression,
            gradient_predivide_factor=float(gradient_predivide_factor),
            prefix=self._hvdps_prefix,
            num_groups=num_groups,
            process_set=rt.topo.group,
        )
        if private_api.averages_in_framework(self) and rt.topo.group_size == 1:
            # Horovod skips the allreduce (and its 1/f prescale) for a set of one rank but
            # still scales by f / 1: undo that, so f never changes the mean
            scale = private_api.grad_scale(self) / float(gradient_predivide_factor)
            private_api.set_grad_scale(self, scale)
        self._rt = rt
        self._sync = sync
        self._t = 0
        with same_on_every_rank():
            wire_dtype, bucket_mb = checks.wire_args(wire, wire_dtype, bucket_mb)
        self._sched = Schedule(
            rt,
            sync,
            self._hvdps_prefix,
            server_opt,
            wire_dtype,
            bucket_mb,
            group=HorovodGroup(rt.topo.group, rt.cfg.settings.timeout),
        )
        self._stats: Dict[str, float] = dict.fromkeys(
            ("allreduce_s", "update_s", "exchange_s", "compute_s"), 0.0
        )
        self._last: Optional[float] = None

    # -- public -----------------------------------------------------------------------------
    @property
    def sync(self) -> Strategy:
        """The strategy across groups (``sync=``)."""
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
        with calls.call("trainer.step"):
            self._setup()
            self._t += 1
            topo, timeout = self._rt.topo, self._rt.cfg.settings.timeout

            self.allreduce_grads()  # Gluon's, calling Horovod's allreduce on the group's set
            grads = [g for b in self._sched.all() for g in b.grads.arrays]
            _wait(
                grads,
                f"gradient allreduce in group {topo.group_id} (ranks {topo.members})",
                timeout,
            )
            t1 = time.perf_counter()
            self._stats["allreduce_s"] += t1 - enter
            if self._sync.local_update:
                self.update(batch_size, ignore_stale_grad)  # Gluon's: rescale, local optimizer
            elif topo.is_leader:
                rescale = private_api.grad_scale(self) / batch_size
                for b in self._sched.all():
                    b.grads.pack_axpby(b.out, rescale, 0.0, out=b.out)
            t2 = time.perf_counter()
            self._stats["update_s"] += t2 - t1
            self._sched.on_step(self._t)
            self._stats["exchange_s"] += time.perf_counter() - t2
            self._last = time.perf_counter()

    def pull_global(self, params: Any = None, local: bool = False) -> None:
        """Load the global model (EASGD's centre, the averaged model, or the servers' weights)
        into the trainer's parameters on every rank of the calling group.

        Collective over the group. An overlapped exchange still in flight is completed first
        (waited for, applied to the local parameters and broadcast), so the global model
        includes it. ``local=True``: only the calling rank, a group's leader, takes part (no
        collective): it pulls the PS's value now, without an exchange still in flight."""
        if params is not None:
            mine = {id(p) for p in private_api.trained_params(self)}
            given = params.values() if hasattr(params, "values") else params
            if any(id(p) not in mine for p in given):
                raise ConfigError("pull_global(params): params must be this trainer's parameters")
        if local:
            self._check_local("pull_global")
            self._sched.pull_global_here()
            return
        with calls.call("trainer.pull_global"):
            self._setup()
            self._sched.pull_global()

    @contextmanager
    def global_model(self, local: bool = False) -> Iterator[None]:
        """Inside the block the parameters hold the global model; after it, the group's own.

        For evaluating the global model mid-training without disturbing local training (EASGD
        and async modes keep training from the local parameters). Collective over the group.
        An overlapped exchange still in flight is completed first, at this call (it is applied
        to the local parameters now instead of at its step), so both models include it.

        ``local=True`` evaluates on one rank, a group's leader, with no collective (global
        rank 0 leads group 0): only its parameters hold the PS's value inside the block; an
        exchange still in flight stays in flight (it is not in that value).

        Example::

            with trainer.global_model():
                acc = evaluate(net)              # on every rank of the group
            if hvd.rank() == 0:
                with trainer.global_model(local=True):
                    acc = evaluate(net)          # on rank 0 alone
        """
        if local:
            self._check_local("global_model")
            self._sched.save_local(complete=False)
            self._sched.pull_global_here()
        else:
            with calls.call("trainer.global_model"):
                self._setup()
                self._sched.save_local()
                self._sched.pull_global()
        try:
            yield
        finally:
            self._sched.restore_local()

    def _check_local(self, what: str) -> None:
        topo = self._rt.topo
        if not topo.is_leader:
            raise ConfigError(
                f"{what}(local=True) on rank {topo.rank}: only a group's leader holds the PS "
                f"client (this group's is rank {topo.leader}); call it where hvd_ps.is_leader() "
                f"is true, or without local=True on every rank of the group"
            )
        self._setup()

    def save_checkpoint(self, path: str) -> None:
        """Save everything this job needs to continue exactly: every group's parameters and
        local optimizer state, the PS side (every key's value and the servers' state: DiLoCo's
        outer momentum, GradientPush's optimizer state), DiLoCo's ``x_start``, an overlapped
        exchange in flight, the step counter and the strategy (:mod:`hvd_ps.train.core.resume`).

        Collective: call it on every rank at the same step. Each group's leader writes its
        group's shard next to ``path`` (so ``path``'s directory must be one every leader and
        rank 0 see: one host, or a shared filesystem); global rank 0 then commits them by
        writing the manifest ``path`` atomically. Raises
        :class:`~hvd_ps.errors.CheckpointError` on every rank if it cannot.
        """
        with calls.call("trainer.save_checkpoint"):
            resume.save(self._checkpointed(), path)

    def load_checkpoint(self, path: str) -> None:
        """Continue from ``path`` (written by :meth:`save_checkpoint`): collective, before the
        first step, instead of ``hvd_ps.broadcast_parameters``. A file that is torn, foreign or
        saved by another setup (strategy, groups, parameters, wire dtype, bucket plan) is
        refused with a :class:`~hvd_ps.errors.CheckpointError` naming what differs.

        Example::

            trainer = hvd_ps.DistributedTrainer(params, 'sgd', {...}, sync=hvd_ps.DiLoCo(16))
            if os.path.exists(path):
                trainer.load_checkpoint(path)
            else:
                hvd_ps.broadcast_parameters(params)
        """
        with calls.call("trainer.load_checkpoint"):
            resume.load(self._checkpointed(), path)

    def stats(self) -> Dict[str, float]:
        """Counters: steps, exchanges, PS bytes, and seconds per phase of ``step()``.

        ``allreduce_s`` runs from the start of ``step()`` until the group's averaged gradients
        are ready, so it includes the tail of the backward pass MXNet still runs asynchronously;
        ``compute_s`` is the time between steps (the caller's forward/backward submission);
        ``exchange_s`` is the time ``step()`` spends on PS exchanges (starting, waiting,
        applying, broadcasting to the group). ``ps_wait_s``, part of it, is how long the
        group's leader was blocked waiting for the PS tier in ``step()`` (the rest of the group
        waits with it, in the broadcast that follows); 0 on other members. ``exchanges``
        counts exchanges started. Async leaders also report ``max_staleness_seen``, the most
        exchanges ahead of the slowest live other group that the group started one with, and
        ``staleness_wait_s``, the seconds it waited for ``max_staleness`` (not part of
        ``ps_wait_s``; :mod:`hvd_ps.ps.clock`); 0 in sync mode and on other members.
        """
        out: Dict[str, float] = {"steps": self._t}
        out.update(self._sched.stats())
        client = self._rt.client
        out["bytes_pushed"] = client.stats.bytes_pushed if client else 0
        out["bytes_pulled"] = client.stats.bytes_pulled if client else 0
        out.update(self._stats)
        return out

    # -- internals --------------------------------------------------------------------------
    @property
    def _buckets(self) -> Optional[List[Bucket]]:
        return self._sched.buckets

    def _setup(self, ps_initial: Optional[List[Any]] = None) -> None:
        """First step: cross-group checks, then fused buffers, PS keys and updaters."""
        if self._sched.buckets is not None:
            return
        topo, sync = self._rt.topo, self._sync
        trained = self._trained()
        signature = (
            repr(sync),
            [(p.name, tuple(p.shape), np.dtype(p.dtype).name) for p in trained],
            # the starting values, unless a checkpoint sets them (once: one copy to the host)
            (
                None
                if ps_initial is not None
                else [checks.digest(p.data().asnumpy()) for p in trained]
            ),
            f"wire_dtype={self._sched.wire_dtype!r}, bucket_mb={self._sched.bucket_mb:g}",
        )
        checks.check_same(
            hvd.allgather_object(signature, name=f"{self._hvdps_prefix}signature"),
            topo.groups,
        )
        sync.validate(topo.total_groups)  # G counts the groups of every job on the tier
        self._sched.setup([Param(p.name, p.data(), p.grad()) for p in trained], ps_initial)

    def _checkpointed(self) -> GluonCheckpoint:
        """This trainer as checkpoints see it."""

        def set_counter(step: int) -> None:
            self._t = step

        return GluonCheckpoint(
            self, self._rt, self._sched, lambda: self._t, set_counter, self._setup, self._trained
        )

    def _trained(self) -> List[Any]:
        """The Parameters this trainer trains (not those with ``grad_req='null'``)."""
        return [p for p in private_api.trained_params(self) if p.grad_req != "null"]
