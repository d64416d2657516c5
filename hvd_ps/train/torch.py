"""The PyTorch front end: ``horovod.torch``'s interface, with Horovod allreduce inside a group
and a sync strategy across groups (``import hvd_ps.torch as hps``).

Step semantics (the contract, as the Gluon trainer's, :mod:`hvd_ps.train.gluon`): a step
counter ``t`` starts at 1. Every ``optimizer.step()``

1. averages the gradients inside the group with ``horovod.torch``'s ``DistributedOptimizer``
   on the group's process set, reused as is (its hooks start each gradient's allreduce during
   the backward pass; the step waits for them);
2. applies the local optimizer's update (skipped under :class:`~hvd_ps.GradientPush`, whose
   update the servers run);
3. if ``t % period == 0``, the group's leader runs the strategy's PS exchange and broadcasts
   the result to its group; with ``overlap=tau`` it starts the exchange then and applies it
   after the local update of step ``t + tau`` (:mod:`hvd_ps.train.core.schedule`).

The strategies, their exchanges and the PS tier are the framework-neutral core's: this module
hands it the parameters as torch tensors (:mod:`hvd_ps.train.torch_buffers`) and the group's
broadcast through ``horovod.torch``. A process that uses this front end runs hvd_ps with
``horovod.torch`` (:mod:`hvd_ps.frameworks`) and never imports ``horovod.mxnet``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

import horovod.torch as hvd  # isort: skip  (after torch: see docs/troubleshooting.md)

from .. import frameworks
from ..deadline import deadline
from ..errors import ConfigError, same_on_every_rank
from . import calls, runtime
from . import trainer_checks as checks
from .core import resume
from .core.schedule import Param, Schedule
from .core.strategies import ServerOptimizer, Strategy
from .torch_buffers import Tensor, TorchGroup, fuse
from .torch_checkpoint import TorchCheckpoint

_optimizers = 0


def init(
    group_size: Optional[int] = None,
    groups: Optional[Sequence[Sequence[int]]] = None,
    *,
    group_offset: Optional[int] = None,
    total_groups: Optional[int] = None,
) -> None:
    """Start hvd_ps with ``horovod.torch``: one process set per group and the PS tier, as
    :func:`hvd_ps.init` (the same arguments); calls ``horovod.torch.init`` itself.

    Example::

        import hvd_ps.torch as hps
        hps.init(group_size=2)          # 4 ranks -> groups [0, 1] and [2, 3]
    """
    frameworks.choose("torch")
    runtime.init(group_size, groups, group_offset=group_offset, total_groups=total_groups)


def broadcast_parameters(params: Any, root_rank: int = 0) -> None:
    """Make every rank's parameters equal to ``root_rank``'s (all ranks, all groups), as
    ``horovod.torch.broadcast_parameters`` (``model.state_dict()`` or
    ``model.named_parameters()``). The PS keys start from these values at the first step."""
    with calls.call("hvd_ps.broadcast_parameters"):
        rt = runtime.runtime()
        what = f"broadcast of the initial parameters from rank {root_rank}"
        with deadline(what, rt.cfg.settings.timeout):
            hvd.broadcast_parameters(params, root_rank=root_rank)


def broadcast_optimizer_state(optimizer: Any, root_rank: int = 0) -> None:
    """Make every rank's optimizer state equal to ``root_rank``'s (all ranks), as
    ``horovod.torch.broadcast_optimizer_state``."""
    with calls.call("hvd_ps.broadcast_parameters"):
        rt = runtime.runtime()
        what = f"broadcast of the optimizer state from rank {root_rank}"
        with deadline(what, rt.cfg.settings.timeout):
            hvd.broadcast_optimizer_state(optimizer, root_rank=root_rank)


def server_optimizer(optimizer: Any) -> ServerOptimizer:
    """GradientPush runs the optimizer on the servers, as MXNet's: a ``torch.optim.SGD``
    (``sgd``, with ``nesterov``: ``nag``) or ``Adam`` (``adam``: MXNet's Adam, whose epsilon
    is added outside the bias correction), with one set of hyperparameters."""
    name = type(optimizer).__name__
    groups = optimizer.param_groups
    keys = ("lr", "momentum", "weight_decay", "nesterov", "dampening", "betas", "eps")
    settings = {tuple((k, repr(g.get(k))) for k in keys) for g in groups}
    if len(settings) != 1:
        raise ConfigError(
            "optimizer: GradientPush runs one optimizer on the PS servers for all parameters; "
            "give every parameter group the same hyperparameters"
        )
    g = groups[0]
    if g.get("maximize") or g.get("amsgrad"):
        raise ConfigError(
            "optimizer: GradientPush's servers run MXNet's optimizers, which have no maximize "
            "or amsgrad: leave them off"
        )
    if isinstance(optimizer, torch.optim.SGD):
        if g["dampening"] != 0:
            raise ConfigError(
                f"optimizer: dampening={g['dampening']} has no counterpart in MXNet's sgd, "
                "which GradientPush's servers run: leave dampening at 0"
            )
        args = {"learning_rate": float(g["lr"]), "momentum": float(g["momentum"])}
        args["wd"] = float(g["weight_decay"])
        return ("nag" if g["nesterov"] else "sgd"), args
    if type(optimizer) is torch.optim.Adam:
        beta1, beta2 = (float(b) for b in g["betas"])
        args = {"learning_rate": float(g["lr"]), "beta1": beta1, "beta2": beta2}
        args.update(epsilon=float(g["eps"]), wd=float(g["weight_decay"]))
        return "adam", args
    raise ConfigError(
        f"optimizer: GradientPush runs the optimizer on the PS servers (MXNet's), and hvd_ps "
        f"maps torch.optim.SGD and torch.optim.Adam there, not {name}: use one of those, or "
        "another strategy"
    )


class Exchanges:
    """What hvd_ps adds to a ``horovod.torch`` distributed optimizer: its strategy, its
    schedule of exchanges with the PS tier, its step counter and counters."""

    def __init__(
        self,
        sync: Strategy,
        prefix: str,
        server_opt: Optional[ServerOptimizer],
        wire: Optional[str],
        bucket_mb: Optional[float],
        base: type,
        named: Optional[List[Any]],
    ) -> None:
        rt = runtime.runtime()
        self.rt, self.sync, self.prefix, self.base = rt, sync, prefix, base
        #: the parameters' names by id, from ``named_parameters``
        self.known: Dict[int, str] = {id(p): n for n, p in named or []}
        self.made: Optional[List[Param]] = None
        self.t = 0
        group = TorchGroup(rt.topo.group, rt.cfg.settings.timeout)
        self.sched = Schedule(rt, sync, prefix, server_opt, wire, bucket_mb, fuse, group)
        self.times: Dict[str, float] = dict.fromkeys(
            ("allreduce_s", "update_s", "exchange_s", "compute_s"), 0.0
        )
        self.last: Optional[float] = None

    def params(self, optimizer: Any) -> List[torch.nn.Parameter]:
        """The parameters the optimizer trains, in its order (each once)."""
        seen, out = set(), []
        for g in optimizer.param_groups:
            for p in g["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def trained(self, optimizer: Any) -> List[Param]:
        """The trained parameters as the core sees them (made once: the core knows them by
        identity), each named from ``named_parameters``, else by its place."""
        if self.made is None:
            params = self.params(optimizer)
            names = [self.known.get(id(p), f"param.{i}") for i, p in enumerate(params)]
            self.made = [
                Param(n, Tensor(p, grad=False), Tensor(p, grad=True)) for n, p in zip(names, params)
            ]
        return self.made

    def setup(self, optimizer: Any, ps_initial: Optional[List[Any]] = None) -> None:
        """First step: every rank trains the same model the same way, then the buckets and
        PS keys (:meth:`~hvd_ps.train.core.schedule.Schedule.setup`; ``ps_initial``: a
        checkpoint's values of the PS keys)."""
        if self.sched.buckets is not None:
            return
        topo = self.rt.topo
        trained = self.trained(optimizer)
        signature = (
            repr(self.sync),
            [(p.name, p.data.shape, p.data.dtype.name) for p in trained],
            # the starting values, unless a checkpoint sets them
            None if ps_initial is not None else [checks.digest(p.data) for p in trained],
            f"wire_dtype={self.sched.wire_dtype!r}, bucket_mb={self.sched.bucket_mb:g}",
        )
        checks.check_same(
            hvd.allgather_object(signature, name=f"{self.prefix}signature"), topo.groups
        )
        self.sync.validate(topo.total_groups)
        self.sched.setup(trained, ps_initial)

    def checkpointed(self, optimizer: Any) -> TorchCheckpoint:
        """This optimizer as checkpoints see it."""

        def set_counter(step: int) -> None:
            self.t = step

        return TorchCheckpoint(
            optimizer,
            self.rt,
            self.sched,
            lambda: self.t,
            set_counter,
            lambda ps: self.setup(optimizer, ps),
            lambda: self.trained(optimizer),
        )


class _Methods:
    """The methods hvd_ps's distributed optimizer has beyond ``horovod.torch``'s (copied into
    the class :func:`DistributedOptimizer` makes; ``self`` is that optimizer)."""

    _hvd_ps: Exchanges

    def step(self, closure: Any = None) -> Any:
        """One training step; see the module docstring for the order of what happens."""
        ex = self._hvd_ps
        enter = time.perf_counter()
        if ex.last is not None:
            ex.times["compute_s"] += enter - ex.last
        loss = None
        with calls.call("optimizer.step"):
            ex.setup(self)
            ex.t += 1
            topo = ex.rt.topo
            what = f"gradient allreduce in group {topo.group_id} (ranks {topo.members})"
            with deadline(what, ex.rt.cfg.settings.timeout):
                self.synchronize()  # type: ignore[attr-defined]  # horovod.torch's
            t1 = time.perf_counter()
            ex.times["allreduce_s"] += t1 - enter
            if ex.sync.local_update:
                with self.skip_synchronize():  # type: ignore[attr-defined]  # horovod.torch's
                    loss = ex.base.step(self, closure)  # type: ignore[attr-defined]
            elif topo.is_leader:  # GradientPush: the group-mean gradient is what is pushed
                for b in ex.sched.all():
                    b.grads.pack(out=b.out)
            t2 = time.perf_counter()
            ex.times["update_s"] += t2 - t1
            ex.sched.on_step(ex.t)
            ex.times["exchange_s"] += time.perf_counter() - t2
            ex.last = time.perf_counter()
        return loss

    @property
    def sync(self) -> Strategy:
        """The strategy across groups (``sync=``)."""
        return self._hvd_ps.sync

    @property
    def t(self) -> int:
        """Steps taken so far."""
        return self._hvd_ps.t

    def _check_model(self, model: Any) -> None:
        if model is None:
            return
        mine = {id(p) for p in self._hvd_ps.params(self)}
        given = model.parameters() if hasattr(model, "parameters") else model
        if any(id(p) not in mine for p in given if p.requires_grad):
            raise ConfigError(
                "model: pass the model (or the parameters) this optimizer trains, or nothing"
            )

    def pull_global(self, model: Any = None) -> None:
        """Load the global model (EASGD's centre, the averaged model, or the servers' weights)
        into the trained parameters on every rank of the calling group. Collective over the
        group; an overlapped exchange still in flight is completed first."""
        self._check_model(model)
        ex = self._hvd_ps
        with calls.call("optimizer.pull_global"):
            ex.setup(self)
            ex.sched.pull_global()

    @contextmanager
    def global_model(self, model: Any = None) -> Iterator[None]:
        """Inside the block the parameters hold the global model; after it, the group's own
        (for evaluating the global model without disturbing local training). Collective over
        the group; an overlapped exchange still in flight is completed first."""
        self._check_model(model)
        ex = self._hvd_ps
        with calls.call("optimizer.global_model"):
            ex.setup(self)
            ex.sched.save_local()
            ex.sched.pull_global()
        try:
            yield
        finally:
            ex.sched.restore_local()

    def save_checkpoint(self, path: str) -> None:
        """Save everything this job needs to continue exactly (the Gluon trainer's
        ``save_checkpoint``, the same files): every group's parameters and local optimizer
        state (``optimizer.state``), the PS side, an overlapped exchange in flight, the step
        counter and the strategy. Collective over every rank at the same step; each group's
        leader writes its group's shard next to ``path``, global rank 0 commits the manifest.
        Raises :class:`~hvd_ps.errors.CheckpointError` on every rank if it cannot."""
        with calls.call("optimizer.save_checkpoint"):
            resume.save(self._hvd_ps.checkpointed(self), path)

    def load_checkpoint(self, path: str) -> None:
        """Continue from ``path`` (written by :meth:`save_checkpoint`): collective, before the
        first step, instead of ``hps.broadcast_parameters``; a file saved by another setup is
        refused with a :class:`~hvd_ps.errors.CheckpointError` naming what differs. The
        optimizer's hyperparameters are the ones this script gave it."""
        with calls.call("optimizer.load_checkpoint"):
            resume.load(self._hvd_ps.checkpointed(self), path)

    def stats(self) -> Dict[str, float]:
        """Counters, as the Gluon trainer's ``stats()``: steps, exchanges, PS bytes, seconds
        per phase of ``step()`` (``allreduce_s`` waits for the group's gradients,
        ``update_s`` is the local update, ``exchange_s`` the PS exchanges and ``ps_wait_s``,
        part of it, the leader's wait for the PS tier), and the strategy's own counters."""
        ex = self._hvd_ps
        out: Dict[str, float] = {"steps": ex.t}
        out.update(ex.sched.stats())
        client = ex.rt.client
        out["bytes_pushed"] = client.stats.bytes_pushed if client else 0
        out["bytes_pulled"] = client.stats.bytes_pulled if client else 0
        out.update(ex.times)
        return out


def DistributedOptimizer(  # noqa: N802  (horovod.torch's name)
    optimizer: Any,
    named_parameters: Any = None,
    compression: Any = hvd.Compression.none,
    backward_passes_per_step: int = 1,
    op: Any = hvd.Average,
    gradient_predivide_factor: float = 1.0,
    num_groups: int = 0,
    groups: Any = None,
    sparse_as_dense: bool = False,
    process_set: Any = None,
    *,
    sync: Optional[Strategy] = None,
    wire: Optional[str] = None,
    bucket_mb: Optional[float] = None,
) -> Any:
    """A ``torch.optim`` optimizer for hvd_ps: group allreduce every step, PS exchange every
    ``sync.period`` steps (see the module docstring for the exact order).

    It takes every argument of ``horovod.torch.DistributedOptimizer`` (0.28.1), with the same
    meaning inside the group (``process_set`` is always this rank's group: leave it out or
    pass ``hvd_ps.group()``), so a Horovod script ports by adding ``sync=``. Like Horovod's,
    it returns an optimizer of a class made from ``optimizer``'s (an instance of it), which
    also has ``pull_global``, ``global_model``, ``stats``, ``sync`` and ``t``.

    Args:
        sync: the strategy across groups (keyword only; default ``ModelAverage(period=1)``, an
            exchange every step). Under ``GradientPush`` the servers run the update, as MXNet's
            optimizer: ``optimizer`` must be a ``torch.optim.SGD`` or ``Adam``.
        wire: the PS wire (keyword only; default ``HVD_PS_WIRE_DTYPE``, else float32):
            ``'float32'``, ``'float16'``, ``'int8'``, ``'int4'``.
        bucket_mb: the largest fused buffer (one PS key) in MB (keyword only; default
            ``HVD_PS_BUCKET_MB``, else 4; 0: one key per dtype).

    Example::

        optimizer = hps.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            named_parameters=model.named_parameters(), sync=hvd_ps.DiLoCo(period=16))
    """
    global _optimizers
    rt = runtime.runtime()
    if frameworks.chosen() != "torch":
        raise ConfigError(
            "hvd_ps.torch.DistributedOptimizer needs hvd_ps.torch.init() (not hvd_ps.init()) "
            "at the start of the script"
        )
    with same_on_every_rank():  # the script's arguments: one line per job
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer must be a torch.optim optimizer, got {type(optimizer).__name__}"
            )
        example = "DistributedOptimizer(optimizer, sync=hvd_ps.EASGD(4))"
        horovod = (compression, gradient_predivide_factor, num_groups, process_set)
        sync = checks.strategy_and_horovod_args(
            "DistributedOptimizer", example, rt.topo, sync, horovod
        )
        if op not in (hvd.Average, hvd.Sum):
            raise ConfigError(
                "op: hvd_ps allreduces inside a group with hvd.Average or hvd.Sum (Horovod's "
                "Adasum supports no process set)"
            )
        server_opt = server_optimizer(optimizer) if sync.server_optimizer else None
        wire_dtype, bucket_mb = checks.wire_args(wire, None, bucket_mb)
    _optimizers += 1
    named = list(named_parameters) if named_parameters is not None else None  # (a generator)
    made = hvd.DistributedOptimizer(
        optimizer,
        named_parameters=named,
        compression=compression,
        backward_passes_per_step=backward_passes_per_step,
        op=op,
        gradient_predivide_factor=gradient_predivide_factor,
        num_groups=num_groups,
        groups=groups,
        sparse_as_dense=sparse_as_dense,
        process_set=rt.topo.group,
    )
    # Horovod makes a class of its own whose only base is the user's optimizer class (its
    # step() calls super(self.__class__, self).step); this class is made the same way, from
    # Horovod's methods and hvd_ps's, so that every method still finds the user's class next
    base = type(made)
    methods = {k: v for k, v in vars(base).items() if k not in ("__dict__", "__weakref__")}
    methods.update({k: v for k, v in vars(_Methods).items() if not k.startswith("__")})
    methods["__module__"] = __name__
    made.__class__ = type(base.__name__, base.__bases__, methods)
    prefix = f"hvd_ps.torch{_optimizers}."
    made._hvd_ps = Exchanges(sync, prefix, server_opt, wire_dtype, bucket_mb, base, named)
    return made
