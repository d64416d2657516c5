"""hvd_ps for PyTorch, shaped like ``horovod.torch``: ``import hvd_ps.torch as hps``.

A Horovod PyTorch script ports in a few lines::

    import torch
    import hvd_ps
    import hvd_ps.torch as hps

    hps.init(group_size=2)                      # groups, their process sets, the PS tier
    hps.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hps.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        named_parameters=model.named_parameters(), sync=hvd_ps.DiLoCo(period=16))
    ...                                         # zero_grad, backward, optimizer.step()
    with optimizer.global_model():              # evaluate the global model
        ...
    hps.shutdown()

Import torch before this module (and never ``horovod.mxnet`` in the same process). The names
load :mod:`hvd_ps.train.torch` (and with it torch and ``horovod.torch``) on first use; the
group queries and the strategies are :mod:`hvd_ps`'s own (``hps.EASGD`` is ``hvd_ps.EASGD``).
"""

from __future__ import annotations

import importlib
from typing import Any, List

#: public name -> the module (under hvd_ps) that defines it
_PUBLIC = {
    "init": "train.torch",
    "broadcast_parameters": "train.torch",
    "broadcast_optimizer_state": "train.torch",
    "DistributedOptimizer": "train.torch",
    "shutdown": "train.runtime",
    "group": "train.runtime",
    "group_id": "train.runtime",
    "group_rank": "train.runtime",
    "group_size": "train.runtime",
    "global_group_id": "train.runtime",
    "groups": "train.runtime",
    "is_leader": "train.runtime",
    "num_groups": "train.runtime",
    "total_groups": "train.runtime",
    "Strategy": "train.core.strategies",
    "GradientPush": "train.core.strategies",
    "ModelAverage": "train.core.strategies",
    "EASGD": "train.core.strategies",
    "DiLoCo": "train.core.strategies",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562) and cache the name here."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hvd_ps.torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hvd_ps.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_PUBLIC))
