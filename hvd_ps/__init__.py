"""hvd_ps: Horovod groups that meet through an MXNet parameter server.

Ranks are split into groups that train synchronously with Horovod allreduce; every few steps
each group's leader exchanges one fused buffer with a parameter-server tier (MXNet's dist
KVStore), synchronously or not. See README.md for the strategies and their update equations.
"""

from .errors import ConfigError, ExchangeTimeout, HvdPsError, TierError, TopologyError
from .fusion import FusedBuffer

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExchangeTimeout",
    "FusedBuffer",
    "HvdPsError",
    "TierError",
    "TopologyError",
    "__version__",
]
