"""ModelAverage: hierarchical local SGD, the groups' parameters averaged every ``period`` steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Tuple

from ....ps import protocol
from ..buckets import Bucket
from ..interfaces import Flat, PSClient
from .base import Exchange, Send, ServerOptimizer, Strategy, register


@dataclass(frozen=True)
class ModelAverage(Strategy):
    """Hierarchical local SGD: every ``period`` steps the groups' parameters are averaged,
    ``x = (1/G) sum_g x_g`` (sync only).

    ``overlap=tau`` (``0 <= tau < period``) starts the exchange from a snapshot ``x_t`` and
    applies it ``tau`` steps later: ``x = mean_g(x_{g,t}) + (x_{t+tau} - x_t)``.

    Example::

        sync = hvd_ps.ModelAverage(period=8)
        sync = hvd_ps.ModelAverage(period=16, overlap=4)  # the exchange hides behind 4 steps
    """

    period: int = 1
    mode: str = "sync"
    overlap: int = 0
    quorum: Optional[int] = None
    grace: Optional[float] = None
    modes: ClassVar[Tuple[str, ...]] = ("sync",)

    def __post_init__(self) -> None:
        self._check_common()

    def __repr__(self) -> str:
        quorum = "" if self.quorum is None else f", quorum={self.quorum}"
        grace = "" if self.grace is None else f", grace={self.grace!r}"
        return f"ModelAverage(period={self.period}, overlap={self.overlap}{quorum}{grace})"


class ModelAverageExchange(Exchange):
    def __init__(
        self, s: ModelAverage, groups: int, wire: Optional[str], _: Optional[ServerOptimizer]
    ) -> None:
        super().__init__(s, groups, wire)
        if self.bits:  # a compressed wire carries the progress since the last average
            self.rule = protocol.Add(scale=1.0 / groups)
        else:
            self.rule = protocol.Assign()  # the servers keep the sum of a round
            self.global_scale = 1.0 / groups

    def initial(self, b: Bucket) -> Any:
        flat = super().initial(b)
        if self.bits:  # the servers keep the average itself
            return flat
        # The PS holds the sum of a round; start as if every group had pushed x0.
        return b.params.pack_axpby(flat, float(self.groups), 0.0, dtype=self.wire, out=flat)

    def wire_send(self, b: Bucket, src: Flat, blocking: bool) -> Optional[Send]:
        return Send(src, b.pulled, 1.0, -1.0)  # x - the last average

    def wire_apply(self, b: Bucket, blocking: bool) -> None:
        if blocking:
            b.params.unpack(b.pulled)  # x = the new average
        else:
            b.snapshot().unpack(b.pulled, alpha=1.0, beta=-1.0)  # average - x_t
            b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += average - x_t

    def exchange(self, b: Bucket, client: PSClient) -> None:
        b.params.pack(dtype=self.wire, out=b.out)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled, alpha=1.0 / self.groups)

    def launch(self, b: Bucket, client: PSClient) -> None:
        b.snapshot().pack(dtype=self.wire, out=b.out)  # push x_t
        client.exchange(b.key, b.out, b.pulled, wait=False)

    def apply(self, b: Bucket) -> None:
        b.snapshot().unpack(b.pulled, alpha=1.0 / self.groups, beta=-1.0)  # mean - x_t
        b.params.unpack(b.snap, alpha=1.0, beta=1.0)  # x += mean - x_t


register(ModelAverage, ModelAverageExchange)
