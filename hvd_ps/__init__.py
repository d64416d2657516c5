"""hvd_ps: Horovod groups that meet through an MXNet parameter server.

Ranks are split into groups that train synchronously with Horovod allreduce; every few steps
each group's leader exchanges fused buffers with a parameter-server tier (MXNet's dist
KVStore), synchronously or not. See the documentation (docs/) for the strategies and their update
equations.

``import hvd_ps`` is light: the public names below load their module (and with it MXNet,
Horovod or the compiled op) on first use, so ``python -m hvd_ps.server``, ``hvdps-run`` and
``hvd_ps.config`` pay only for what they use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, List

from .config import defuse_stock_server as _defuse

_defuse()  # before anything imports mxnet: see hvd_ps/server.py

from .exits import install as _one_line_errors  # noqa: E402

_one_line_errors()  # an hvd_ps error that ends the program: one line per job, even before init

__version__ = "0.1.0"  # setup.py reads it from here

#: public name -> the module that defines it
_PUBLIC = {
    "HvdPsError": "errors",
    "ConfigError": "errors",
    "TopologyError": "errors",
    "TierError": "errors",
    "CheckpointError": "errors",
    "NonFiniteError": "errors",
    "FusedBuffer": "train.core.fusion",
    "init": "train.runtime",
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
    "DistributedTrainer": "train.gluon",
    "broadcast_parameters": "train.gluon",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562) and cache the name here; a
    submodule's name (``hvd_ps.train.runtime``) imports that submodule."""
    module = _PUBLIC.get(name)
    if module is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'hvd_ps' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_PUBLIC))
