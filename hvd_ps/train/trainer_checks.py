"""What a front end's trainer checks of its arguments and across its ranks, with messages that
name the argument or the rank that differs (the Gluon ``DistributedTrainer``, the PyTorch
``DistributedOptimizer``): Horovod's arguments, the process set, the wire, and that every rank
trains the same model with the same strategy."""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import arguments, config, frameworks
from ..errors import ConfigError, HvdPsError
from .core.strategies import ModelAverage, Strategy


def strategy_and_horovod_args(
    name: str,
    example: str,
    topo: Any,
    sync: Any,
    horovod: Tuple[Any, Any, Any, Any],
) -> Strategy:
    """A trainer's (``name``, e.g. ``DistributedTrainer``) strategy, checked for the job's
    groups, and Horovod's arguments ``horovod = (compression, gradient_predivide_factor,
    num_groups, process_set)``; ``example``: a call with ``sync=`` for the messages. Without
    ``sync`` it is ``ModelAverage(period=1)``, which global rank 0 says once."""
    compression, factor, num_groups, process_set = horovod
    if isinstance(compression, Strategy):
        raise ConfigError(f"compression: got a strategy; pass it as sync=..., e.g. {example}")
    if sync is None:
        sync = ModelAverage(period=1)
        if frameworks.horovod().rank() == 0:  # say so once per job: it exchanges every step
            sys.stderr.write(
                f"hvd_ps: {name} without sync=: using {sync!r}, an exchange with the PS tier "
                "every step; pass sync= (e.g. hvd_ps.EASGD(period=4)) to exchange less often\n"
            )
            sys.stderr.flush()
    if not isinstance(sync, Strategy):
        raise ConfigError(f"sync must be a strategy such as hvd_ps.EASGD(...), got {sync!r}")
    sync.validate(topo.total_groups)  # e.g. unstable sync EASGD: fail before any step
    check_horovod_args(topo, compression, factor, num_groups)
    check_process_set(topo, process_set)
    return sync


def check_horovod_args(topo: Any, compression: Any, factor: Any, num_groups: Any) -> None:
    """Horovod's own arguments, checked with messages that name them."""
    if not (hasattr(compression, "compress") and hasattr(compression, "decompress")):
        raise ConfigError(
            f"compression must be a Horovod compressor such as hvd.Compression.fp16, "
            f"got {compression!r}"
        )
    arguments.number("gradient_predivide_factor", factor, 0.0)
    arguments.integer(
        "num_groups", num_groups, low=0, hint="Horovod's grouped allreduces inside the group"
    )


def check_process_set(topo: Any, process_set: Any) -> None:
    if process_set is None or process_set is topo.group:
        return
    hvd = frameworks.horovod()
    ranks = getattr(process_set, "ranks", None)
    if process_set is hvd.global_process_set:
        ranks = list(range(hvd.size()))
    if ranks is not None and sorted(ranks) == topo.members:
        return
    raise ConfigError(
        f"process_set: hvd_ps allreduces inside this rank's group (ranks {topo.members}); "
        f"leave process_set out or pass hvd_ps.group(), not a set of ranks {ranks}"
    )


def server_optimizer(optimizer: Any, params: Optional[Dict[str, Any]]) -> Tuple[Any, ...]:
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


def digest(host: Any) -> str:
    """A parameter's starting values (a numpy array) as a short text to compare across ranks."""
    return hashlib.sha1(np.ascontiguousarray(host).tobytes()).hexdigest()


def check_same(signatures: List[Any], groups: List[List[int]]) -> None:
    """Every rank must train the same parameters (names, shapes, dtypes, starting values) with
    the same strategy. Every rank compares the same signatures, so all raise alike."""
    model = "build the same model, in the same order, on every rank"
    ref_strategy, ref_params, ref_digests, ref_wire = signatures[0]
    there = "on rank 0 (group 0)"
    for rank, (strategy, params, digests, wire) in enumerate(signatures):
        gid = next(i for i, g in enumerate(groups) if rank in g)
        here = f"on rank {rank} (group {gid})"
        why = None
        if strategy != ref_strategy:
            why = f"sync strategy differs: {strategy} {here}, {ref_strategy} {there}: pass "
            why += "every rank the same sync="
        elif wire != ref_wire:
            why = f"PS traffic differs: {wire} {here}, {ref_wire} {there}: pass every rank the "
            why += "same wire_dtype and bucket_mb (or none: HVD_PS_WIRE_DTYPE, HVD_PS_BUCKET_MB)"
        elif len(params) != len(ref_params):
            why = f"number of trained parameters differs: {len(params)} {here}, "
            why += f"{len(ref_params)} {there}: {model}"
        for (n, s, d), (rn, rs, rd) in zip(params, ref_params):
            if why is None and (n, s, d) != (rn, rs, rd):
                why = f"parameter {n!r} differs across groups: {s} {d} {here} but {rn!r} {rs} "
                why += f"{rd} {there}: {model}"
        for (n, *_), mine, ref_digest in zip(params, digests or [], ref_digests or []):
            if why is None and mine != ref_digest:
                why = (
                    f"parameter {n!r} starts with other values {here} than {there}: call "
                    "hvd_ps.broadcast_parameters(params) (or trainer.load_checkpoint) before "
                    "the first trainer.step, so that every group starts from the same model"
                )
        if why is not None:
            err = HvdPsError(why)
            err.every_rank = True  # every rank compares the same signatures
            raise err


def wire_args(
    wire: Optional[str], wire_dtype: Optional[str], bucket_mb: Optional[float]
) -> Tuple[Optional[str], Optional[float]]:
    """The trainer's wire (``wire``, or its older name ``wire_dtype``) and ``bucket_mb``,
    checked (None: the environment's)."""
    if wire is not None and wire_dtype is not None:
        raise ConfigError("give wire= or wire_dtype= (the same argument), not both")
    name = "wire" if wire is not None else "wire_dtype"
    wire = wire if wire is not None else wire_dtype
    if wire is not None and wire not in config.WIRE_DTYPES:
        raise ConfigError(f"{name} must be one of {', '.join(config.WIRE_DTYPES)}, got {wire!r}")
    wire_dtype = wire
    if bucket_mb is not None:
        bucket_mb = arguments.number("bucket_mb", bucket_mb, 0.0, open_low=False)
    return wire_dtype, bucket_mb
