"""Buckets: a trainer's parameters as fused buffers, one PS key each, with their scratch arrays.

:func:`plan_buckets` splits the parameters (one dtype per bucket, each at most
``HVD_PS_BUCKET_MB``); the schedule (:mod:`hvd_ps.train.core.schedule`) makes one
:class:`Bucket` per group of them and allocates its arrays once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from ...errors import HvdPsError

if TYPE_CHECKING:
    from .fusion import FusedBuffer
    from .interfaces import Flat


@dataclass
class Bucket:
    """One fused buffer of a trainer's parameters (one dtype), with its PS key and scratch.

    The leader's arrays (``out``, ``pulled``, ``snap``) are flat, of the buffer's size, and
    exist only on a group's leader once the schedule has set the bucket up."""

    index: int  #: position among the trainer's buckets
    params: Flat  #: the parameters (the front end's arrays as one flat buffer)
    grads: Flat  #: their gradients
    names: List[str] = field(default_factory=list)  #: the parameters' names, in layout order
    key: int = -1  #: the PS key (leader)
    out: Any = None  #: what is pushed (wire dtype)
    pulled: Any = None  #: what is pulled (wire dtype)
    snap: Any = None  #: overlap: the snapshot x_t (parameter dtype)
    snap_buf: Optional[FusedBuffer] = None  #: the fused op on the snapshot

    def snapshot(self) -> FusedBuffer:
        """The fused op on the snapshot ``x_t`` (a leader's overlapped exchange)."""
        if self.snap_buf is None:
            raise HvdPsError(f"bucket {self.index} has no snapshot: its exchange is not overlapped")
        return self.snap_buf


def plan_buckets(arrays: Sequence[Any], max_bytes: int) -> List[List[int]]:
    """Split ``arrays`` into fused buffers: one dtype per buffer, each at most ``max_bytes``.

    Returns lists of indices into ``arrays``, in order within each dtype (first-seen dtype
    first). An array larger than ``max_bytes`` gets a buffer of its own; ``max_bytes <= 0``
    gives one buffer per dtype. Several buffers let their PS transfers overlap.

    Example::

        plan_buckets([a32_10MB, a32_10MB, a16_1MB], 16 << 20)  # -> [[0], [1], [2]]
    """
    by_dtype: Dict[str, Any] = {}
    for i, a in enumerate(arrays):
        by_dtype.setdefault(np.dtype(a.dtype).name, []).append(i)
    out: List[List[int]] = []
    for idx in by_dtype.values():
        current: List[int] = []
        size = 0
        for i in idx:
            nbytes = int(np.prod(arrays[i].shape)) * np.dtype(arrays[i].dtype).itemsize
            if current and max_bytes > 0 and size + nbytes > max_bytes:
                out.append(current)
                current, size = [], 0
            current.append(i)
            size += nbytes
        if current:
            out.append(current)
    return out


def fresh(b: Bucket, dtype: Optional[str]) -> Any:
    """A flat array of its own for a bucket (set-up only: not one of the buffer's pool)."""
    import mxnet as mx

    return mx.nd.zeros((b.params.size,), dtype=dtype or b.params.dtype)
