"""The seams of the core, as types: what it needs of the PS client, of the job it runs in, of
a strategy's leader exchange, and the registry of exchanges in flight.

The core never names a concrete class across these seams: :class:`hvd_ps.ps.client.Client` is a
:class:`PSClient`, :class:`hvd_ps.train.runtime.Runtime` a :class:`Job`, and each strategy's
exchange (:mod:`hvd_ps.train.core.strategies`) an :class:`~.strategies.base.Exchange`. mypy checks
each of them against these protocols where they are handed over.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol

from ... import config, topology
from ...ps import protocol
from ...ps.clock import Clock
from ...ps.rounds import Rounds


class PSClient(Protocol):
    """A group leader's connection to the PS tier (:class:`hvd_ps.ps.client.Client`).

    Every transfer only queues work on MXNet's engine; :meth:`wait` is the one bounded wait."""

    @property
    def cfg(self) -> config.Config: ...

    @property
    def mode(self) -> Optional[str]: ...

    @property
    def where(self) -> str:
        """The tier, for messages (``PS tier at host:port (n server(s))``)."""
        ...

    @property
    def ps_rank(self) -> int:
        """This leader's rank among the tier's workers (0 initialises the keys)."""
        ...

    @property
    def rejoined(self) -> bool:
        """This leader took the place of its group's dead predecessor (async, shared tier)."""
        ...

    def set_mode(self, mode: str, rounds: bool = True) -> None: ...

    @property
    def num_servers(self) -> int: ...

    def register(
        self,
        name: str,
        initial: Any,
        rule: protocol.Rule,
        out: Any = None,
        server: Optional[int] = None,
    ) -> int:
        """A PS key named ``name`` set to ``initial`` with the servers' ``rule``; its id
        (``server``: one that lives whole on that server)."""
        ...

    def command(self, key: int, rule: protocol.Rule) -> None: ...

    def push(self, key: int, value: Any) -> None: ...

    def exchange(self, key: int, push: Optional[Any], pull: Any, wait: bool = True) -> None: ...

    def wait(self, arrays: List[Any], what: str) -> None: ...

    def barrier(self, what: str) -> None: ...

    def clock(self, name: str, bound: Optional[int]) -> Clock:
        """An async trainer's group clock (:mod:`hvd_ps.ps.clock`) on PS key ``name``."""
        ...

    def quorum_rounds(self, name: str, record: protocol.Rounds) -> Rounds:
        """A quorum trainer's sync rounds (:mod:`hvd_ps.ps.rounds`) on PS key ``name``."""
        ...


class Flat(Protocol):
    """A front end's parameters (or gradients) of one bucket seen as one flat buffer: what the
    strategies' exchanges read and write. :class:`hvd_ps.train.core.fusion.FusedBuffer` is the
    one for MXNet arrays (the fused op, one pass each); a front end for another framework
    hands the schedule its own (``Schedule(fuse=...)``). The flat buffers (``out``, ``flat``,
    ``ref``, ``center``) are the PS wire's, 1-D MXNet arrays of :attr:`size` elements."""

    @property
    def arrays(self) -> List[Any]:
        """The front end's arrays, in layout order."""
        ...

    @property
    def size(self) -> int: ...

    @property
    def dtype(self) -> Any:
        """The arrays' numpy dtype."""
        ...

    @property
    def threads(self) -> int: ...

    def pack(self, dtype: Any = None, out: Any = None) -> Any:
        """``out = arrays`` (cast to ``dtype``)."""
        ...

    def unpack(self, flat: Any, alpha: float = 1.0, beta: float = 0.0) -> None:
        """``arrays = alpha * flat + beta * arrays``."""
        ...

    def pack_axpby(
        self, ref: Any, alpha: float, beta: float, dtype: Any = None, out: Any = None
    ) -> Any:
        """``out = alpha * arrays + beta * ref``."""
        ...

    def elastic(self, center: Any, alpha: float, out: Any = None, dtype: Any = None) -> Any:
        """``d = alpha * (arrays - center)``, ``arrays -= d``; returns ``d`` in ``out``."""
        ...


#: how a front end fuses arrays into a :class:`Flat` (arrays, threads of the fused op)
Fuse = Callable[[List[Any], int], Flat]


class Group(Protocol):
    """The collectives of a rank's group that the core needs, through the front end's Horovod
    (one Horovod per process: a front end for another framework brings its own)."""

    def broadcast(self, arrays: List[Any], root: int, names: List[str], what: str) -> None:
        """Broadcast each of ``arrays`` (the PS wire's flat buffers) in place from global rank
        ``root`` to the group, as Horovod tensors ``names``; wait for all of them, bounded,
        ``what`` naming the wait in an error."""
        ...


class Completable(Protocol):
    """Something with an exchange in flight that :func:`hvd_ps.shutdown` must complete."""

    def complete(self, why: str) -> None: ...


class InFlight:
    """The schedules with an overlapped exchange in flight, in the order they started it (the
    same on every rank). Held strongly, so that no rank's garbage collector can drop one that
    another rank still completes; ``hvd_ps.shutdown`` completes them first."""

    def __init__(self) -> None:
        self._items: Dict[int, Completable] = {}

    def add(self, item: Completable) -> None:
        self._items[id(item)] = item

    def discard(self, item: Completable) -> None:
        self._items.pop(id(item), None)

    def __len__(self) -> int:
        return len(self._items)

    def complete_all(self, why: str) -> None:
        """Complete every exchange in flight, in the order they started."""
        for item in list(self._items.values()):
            item.complete(why)


class Job(Protocol):
    """What the core needs of the job it runs in (:class:`hvd_ps.train.runtime.Runtime`)."""

    @property
    def cfg(self) -> config.Config: ...

    @property
    def topo(self) -> topology.Topology: ...

    @property
    def client(self) -> Optional[PSClient]:
        """The PS client on a group's leader, None on the other ranks."""
        ...

    @property
    def in_flight(self) -> InFlight: ...

    @property
    def rejoined(self) -> bool:
        """This job's groups took the places of dead ones on a shared tier."""
        ...
