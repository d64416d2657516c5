"""Which Horovod binding a process runs hvd_ps with: ``horovod.mxnet`` (the Gluon front end,
the default) or ``horovod.torch`` (the PyTorch front end, :mod:`hvd_ps.torch`).

Horovod compiles its core into each binding's library, so each binding has its own process
sets, its own background thread and its own ``init``: a process uses one. hvd_ps's own
collectives (the groups' process sets, its barriers, its object collectives at set-up and in
checkpoints) go through the binding chosen here; a front end chooses it before ``hvd_ps.init``
and a process keeps its choice. Nothing here imports a framework until it is used.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from .errors import HvdPsError

#: the front ends' frameworks, as Horovod names its bindings (``horovod.<name>``)
NAMES = ("mxnet", "torch")

_chosen: Optional[str] = None


def choose(name: str) -> None:
    """This process runs hvd_ps with ``horovod.<name>``; HvdPsError if it chose another."""
    global _chosen
    if name not in NAMES:
        raise HvdPsError(f"no hvd_ps front end for {name!r}: one of {', '.join(NAMES)}")
    if _chosen is not None and _chosen != name:
        raise HvdPsError(
            f"this process runs hvd_ps with horovod.{_chosen} already, so it cannot use the "
            f"{name} front end too: use one framework per training process"
        )
    _chosen = name


def chosen() -> str:
    """The framework of this process's Horovod (``mxnet`` unless a front end chose another)."""
    return _chosen or "mxnet"


def horovod() -> Any:
    """The Horovod binding of this process (imported on first use)."""
    return importlib.import_module(f"horovod.{chosen()}")


def allreduce_zero(name: str, process_set: Any) -> None:
    """An allreduce of one zero over ``process_set``, waited for: the core of a barrier."""
    hvd = horovod()
    if chosen() == "torch":
        import torch

        hvd.allreduce(torch.zeros(1), name=name, process_set=process_set)
        return
    import mxnet as mx

    hvd.allreduce(mx.nd.zeros((1,)), name=name, process_set=process_set).wait_to_read()
