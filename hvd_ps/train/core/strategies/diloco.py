"""DiLoCo: inner steps in each group, an outer Nesterov step on the servers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from .... import arguments
from ....ps import protocol
from ..buckets import Bucket, fresh
from ..interfaces import Flat, PSClient
from .base import Exchange, Send, ServerOptimizer, Strategy, register, store


@dataclass(frozen=True, repr=False)  # Strategy.__repr__
class DiLoCo(Strategy):
    """DiLoCo (Douillard et al. 2023): groups take ``period`` inner steps, then push the
    pseudo-gradient ``D = x_start - x``; the servers run outer Nesterov SGD on ``w`` (PyTorch's
    ``SGD(nesterov=True)`` / MXNet's NAG, no weight decay): ``v = m v + D'; w -= lr (D' + m v)``
    where ``D'`` is the round's mean. Groups then restart from ``x = x_start = w``. In async
    mode each push is ``1/G`` of a round: ``w -= outer_lr D / G`` at once, and the momentum
    is applied once every ``G`` pushes, with ``A`` the sum of their ``D / G`` (delayed
    Nesterov): ``v = m v + A; w -= outer_lr m v``. The sync hyperparameters carry over.

    ``overlap=tau`` (``0 <= tau < period``) pushes ``D = x_start - x_t`` from a snapshot and
    applies the servers' ``w`` ``tau`` steps later: ``x = w + (x_{t+tau} - x_t)``,
    ``x_start = w``.

    With ``mode='async'``: ``max_staleness=s`` (a group waits rather than run more than ``s``
    exchanges ahead of the slowest live one) and ``period='auto'`` with ``min_period`` and
    ``max_period`` (each group's local steps ``H`` from its pace, the fastest group's
    ``max_period`` ``P``; each push is weighted by ``H / P``): docs/stragglers.md.

    Example::

        sync = hvd_ps.DiLoCo(period=16, outer_lr=0.7, momentum=0.9)
        sync = hvd_ps.DiLoCo(period=64, overlap=16)
    """

    period: Union[int, str] = 16
    outer_lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True
    mode: str = "sync"
    overlap: int = 0
    max_staleness: Optional[int] = None
    min_period: Optional[int] = None
    max_period: Optional[int] = None
    quorum: Optional[int] = None
    grace: Optional[float] = None

    def __post_init__(self) -> None:
        self._check_common()
        store(
            self,
            outer_lr=arguments.number("outer_lr", self.outer_lr, 0.0, math.inf),
            momentum=arguments.number("momentum", self.momentum, 0.0, 1.0, open_low=False),
            nesterov=arguments.flag("nesterov", self.nesterov),
        )


class DiLoCoExchange(Exchange):
    def __init__(
        self, s: DiLoCo, groups: int, wire: Optional[str], _: Optional[ServerOptimizer]
    ) -> None:
        super().__init__(s, groups, wire)
        self.rule = protocol.Nesterov(
            lr=s.outer_lr,
            momentum=s.momentum,
            nesterov=s.nesterov,
            # sync: the mean of a round's G pushes; async: each push is 1/G of a round and
            # the momentum is applied once every G pushes (delayed Nesterov)
            scale=1.0 / groups,
            delay=1 if s.mode == "sync" else groups,
        )
        #: per bucket: x_start (the parameters' dtype) and the fused op over it
        self.start: Dict[int, Tuple[Any, Any]] = {}

    def initial(self, b: Bucket) -> Any:
        from ..fusion import FusedBuffer

        start = b.params.pack(out=fresh(b, None))  # x_start = x0
        self.start[b.index] = (start, FusedBuffer([start], threads=b.params.threads))
        return super().initial(b)

    def starts(self) -> List[Any]:
        """Every bucket's ``x_start``, in bucket order."""
        return [self.start[i][0] for i in sorted(self.start)]

    def state_arrays(self) -> Dict[str, Any]:
        return {f"start/{i}": start for i, start in enumerate(self.starts())}

    def rejoin(self, b: Bucket) -> None:
        super().rejoin(b)  # x = w
        self.start[b.index][1].unpack(b.pulled)  # x_start = w

    def exchange(self, b: Bucket, client: PSClient) -> None:
        start, _ = self.start[b.index]
        w = self.weight  # D = w (x_start - x): 1, or with period='auto' its local steps / P
        b.params.pack_axpby(start, -w, w, dtype=self.wire, out=b.out)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled)  # x = w
        b.params.pack(out=start)  # x_start = w

    def launch(self, b: Bucket, client: PSClient) -> None:
        start, _ = self.start[b.index]
        w = self.weight  # D = w (x_start - x_t)
        b.snapshot().pack_axpby(start, -w, w, dtype=self.wire, out=b.out)
        client.exchange(b.key, b.out, b.pulled, wait=False)

    def wire_send(self, b: Bucket, src: Flat, blocking: bool) -> Optional[Send]:
        start, _ = self.start[b.index]
        return Send(src, start, -self.weight, self.weight)  # D = w (x_start - x)

    def wire_apply(self, b: Bucket, blocking: bool) -> None:
        if blocking:
            b.params.unpack(b.pulled)  # x = w (the copy)
            self.start[b.index][1].unpack(b.pulled)  # x_start = w
        else:
            self.apply(b)

    def apply(self, b: Bucket) -> None:
        _, start_buf = self.start[b.index]
        b.snapshot().unpack(b.pulled, alpha=1.0, beta=-1.0)  # w - x_t
        b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += w - x_t
        start_buf.unpack(b.pulled)  # x_start = w


register(DiLoCo, DiLoCoExchange)
