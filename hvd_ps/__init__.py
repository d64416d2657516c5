"""hvd_ps: Horovod groups that meet through an MXNet parameter server.

Ranks are split into groups that train synchronously with Horovod allreduce; every few steps
each group's leader exchanges fused buffers with a parameter-server tier (MXNet's dist
KVStore), synchronously or not. See README.md for the strategies and their update equations.
"""

from .config import defuse_stock_server as _defuse

_defuse()  # before anything imports mxnet: see hvd_ps/server.py

from .errors import ConfigError, HvdPsError, TierError, TopologyError
from .fusion import FusedBuffer
from .runtime import (
    group,
    group_id,
    group_rank,
    group_size,
    groups,
    init,
    is_leader,
    num_groups,
    shutdown,
)
from .strategies import EASGD, DiLoCo, GradientPush, ModelAverage, Strategy
from .trainer import DistributedTrainer, broadcast_parameters

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DiLoCo",
    "DistributedTrainer",
    "EASGD",
    "FusedBuffer",
    "GradientPush",
    "HvdPsError",
    "ModelAverage",
    "Strategy",
    "TierError",
    "TopologyError",
    "__version__",
    "broadcast_parameters",
    "group",
    "group_id",
    "group_rank",
    "group_size",
    "groups",
    "init",
    "is_leader",
    "num_groups",
    "shutdown",
]
