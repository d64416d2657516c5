"""Which of hvd_ps's collective calls each rank is waiting in, so that a call some rank never
makes ends the job within seconds instead of at ``HVD_PS_TIMEOUT``.

``trainer.step``, ``pull_global`` and ``global_model`` (and the PyTorch front end's
``optimizer.step``, ``pull_global``, ``global_model``) are collective over a rank's group;
``broadcast_parameters``, ``save_checkpoint``, ``load_checkpoint`` and ``shutdown`` over the
whole job. A rank that calls one while another rank of its span does not (the Horovod habit
``if hvd.rank() == 0: with trainer.global_model(): ...``) would wait in a Horovod operation the
other never joins. Each rank publishes which call it waits in (the call's name, its span and
how many calls of that span it has made) and answers the others' questions about it from a
thread of its own, with MPI messages outside any collective. A waiting rank that sees, for
:data:`GRACE_S` seconds on end, a rank of its span waiting in another call whose span includes
it, knows neither can go on: the job ends with one line naming the call, the ranks in each and
what to do. A rank that is busy in the script's own code is not waiting: it is never blamed.
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

from .. import deadline, exits
from ..topology import Topology

#: the collective calls, by the code a rank publishes (0: not waiting in any)
CALLS = (
    "",
    "trainer.step",
    "trainer.pull_global",
    "trainer.global_model",
    "hvd_ps.broadcast_parameters",
    "trainer.save_checkpoint",
    "trainer.load_checkpoint",
    "hvd_ps.shutdown",
    # the PyTorch front end's (hvd_ps.torch)
    "optimizer.step",
    "optimizer.pull_global",
    "optimizer.global_model",
    "optimizer.save_checkpoint",
    "optimizer.load_checkpoint",
)
GROUP, WORLD = 0, 1
#: the span of each call
SPAN = {
    "trainer.step": GROUP,
    "trainer.pull_global": GROUP,
    "trainer.global_model": GROUP,
    "hvd_ps.broadcast_parameters": WORLD,
    "trainer.save_checkpoint": WORLD,
    "trainer.load_checkpoint": WORLD,
    "hvd_ps.shutdown": WORLD,
    "optimizer.step": GROUP,
    "optimizer.pull_global": GROUP,
    "optimizer.global_model": GROUP,
    "optimizer.save_checkpoint": WORLD,
    "optimizer.load_checkpoint": WORLD,
}
#: how long two ranks must be seen waiting in calls that exclude each other
GRACE_S = 3.0
#: what a rank publishes: the call's code, its span, this span's call count, waiting (0/1)
FIELDS = 4
#: message tags of the board's questions and answers
ASK, ANSWER = 1, 2
#: how often a rank looks for questions, and how long an asker waits for an answer (s)
SERVE_PERIOD_S = 0.02
ANSWER_WAIT_S = 1.0
#: what to do, by the call a rank alone made
ADVICE = {
    "trainer.global_model": (
        "call it on every rank of the group, or evaluate on one leader alone with "
        "'with trainer.global_model(local=True):' (global rank 0 leads group 0)"
    ),
    "trainer.pull_global": (
        "call it on every rank of the group, or trainer.pull_global(local=True) on a leader alone"
    ),
    "optimizer.global_model": "call it on every rank of the group",
    "optimizer.pull_global": "call it on every rank of the group",
}
#: what to do otherwise
COLLECTIVE = "call it on every rank at the same point of the script"


class Board:
    """This rank's published call, and a reader of the others'.

    Each rank answers questions about its call from a thread of its own, on a duplicate of the
    world communicator (hvd_ps's messages never meet the script's), with two-sided messages:
    the transport Horovod's own MPI traffic already uses on every network."""

    def __init__(self, topo: Topology) -> None:
        from mpi4py import MPI

        self.mpi = MPI
        self.topo = topo
        self.rank = topo.rank
        self.comm = MPI.COMM_WORLD.Dup()  # collective: every rank, in init
        self.memory: Tuple[int, ...] = (0,) * FIELDS
        self.counts = [0, 0]  # calls made, per span
        self.lock = threading.Lock()  # guards memory and counts
        self.asks = itertools.count()
        #: the mismatch seen first and since when (the grace period runs on it)
        self.seen: Optional[Tuple[Tuple[int, ...], float]] = None
        self.running = True
        self.server = threading.Thread(target=self._serve, name="hvd_ps-calls", daemon=True)
        self.server.start()

    def close(self) -> None:
        """Stop answering (at shutdown). The duplicate communicator lives until the process
        ends: a question a peer sent late may still wait in it, unanswered (the peer gives up
        on it after :data:`ANSWER_WAIT_S`)."""
        self.running = False
        self.server.join(timeout=1.0)

    def _serve(self) -> None:
        status = self.mpi.Status()
        while self.running:
            if not self.comm.Iprobe(source=self.mpi.ANY_SOURCE, tag=ASK, status=status):
                time.sleep(SERVE_PERIOD_S)
                continue
            asker = status.Get_source()
            ask = self.comm.recv(source=asker, tag=ASK)
            with self.lock:
                state = self.memory
            self.comm.send((ask, state), dest=asker, tag=ANSWER)  # small: sent eagerly

    @contextmanager
    def call(self, name: str) -> Iterator[None]:
        """This rank waits in the collective call ``name`` while the body runs."""
        span = SPAN[name]
        with self.lock:
            self.counts[span] += 1
            self.memory = (CALLS.index(name), span, self.counts[span], 1)
        try:
            yield
        finally:
            with self.lock:
                self.memory = (0,) * FIELDS
            self.seen = None

    def _read(self, rank: int) -> Optional[Tuple[int, ...]]:
        """Rank ``rank``'s call, or None if it does not answer within :data:`ANSWER_WAIT_S`."""
        ask = next(self.asks)
        self.comm.send(ask, dest=rank, tag=ASK)
        request = self.comm.irecv(source=rank, tag=ANSWER)
        end = time.monotonic() + ANSWER_WAIT_S
        while time.monotonic() < end:
            done, answer = request.test()
            if not done or answer is None:
                time.sleep(0.005)
                continue
            if answer[0] == ask:
                return tuple(int(v) for v in answer[1])
            request = self.comm.irecv(source=rank, tag=ANSWER)  # a late answer to an old ask
        request.Cancel()
        return None

    def _state(self, rank: int) -> Tuple[int, ...]:
        """A rank's call (code, span, count, waiting); not waiting if it does not answer."""
        if rank == self.rank:
            with self.lock:
                return self.memory
        return self._read(rank) or (0,) * FIELDS

    def _members(self, span: int, of_rank: int) -> List[int]:
        if span == WORLD:
            return list(range(sum(len(g) for g in self.topo.groups)))
        return next(list(g) for g in self.topo.groups if of_rank in g)

    def check(self) -> Optional[Tuple[str, int]]:
        """While this rank waits: if it waits for a rank that waits in another call that needs
        this one, for :data:`GRACE_S` on end, the job's one line and the rank that says it
        (the lowest waiting rank of the span, from the same look, so that every rank that
        sees it names the same one); else None."""
        mine = self._state(self.rank)
        code, span, count, waiting = mine
        if not waiting:
            return None
        # one look at every rank of the span first, then the verdict on that look
        states = {other: self._state(other) for other in self._members(span, self.rank)}
        for other, (o_code, o_span, o_count, o_waiting) in states.items():
            stuck = o_waiting and (o_code, o_span, o_count) != (code, span, count)
            if stuck and self.rank in self._members(o_span, other):
                return self._after_grace(states)
        self.seen = None
        return None

    def _after_grace(self, states: Dict[int, Tuple[int, ...]]) -> Optional[Tuple[str, int]]:
        key = tuple(v for s in states.values() for v in s)
        now = time.monotonic()
        if self.seen is None or self.seen[0] != key:
            self.seen = (key, now)
            return None
        if now - self.seen[1] < GRACE_S:
            return None
        reporter = min(r for r, state in states.items() if state[3])
        return describe(states), reporter


def describe(states: Dict[int, Tuple[int, ...]]) -> str:
    """One line: which ranks wait in which call, and what to do."""
    by_call: Dict[str, List[int]] = {}
    for rank, (code, _, _, waiting) in sorted(states.items()):
        by_call.setdefault(CALLS[code] if waiting else "the script's own code", []).append(rank)
    waits = "; ".join(f"ranks {ranks} wait in {name}()" for name, ranks in by_call.items())
    # the call fewer ranks made is the one the others skipped
    calls = [c for c in by_call if c in SPAN]
    lone = min(calls, key=lambda c: len(by_call[c])) if calls else ""
    advice = ADVICE.get(lone, COLLECTIVE)
    return f"{lone}() is collective, but not every rank called it: {waits}; {advice}"


_board: Optional[Board] = None


def start(topo: Topology) -> None:
    """Open this job's board (collective, in ``hvd_ps.init``) and let every bounded wait of
    this process consult it. A job of one rank has no one to miss a call."""
    global _board
    if sum(len(g) for g in topo.groups) < 2:
        return
    _board = Board(topo)
    deadline.watch(_watch)


def stop() -> None:
    """Close the board (collective, in ``hvd_ps.shutdown``)."""
    global _board
    board, _board = _board, None
    deadline.watch(None)
    if board is not None:
        board.close()


@contextmanager
def call(name: str) -> Iterator[None]:
    """Publish that this rank waits in collective call ``name`` (no-op before ``init``)."""
    if _board is None:
        yield
        return
    with _board.call(name):
        yield


def _watch() -> Optional[str]:
    board = _board
    if board is None:
        return None
    found = board.check()
    if found is None:
        return None
    line, reporter = found
    if reporter != board.rank:
        # the lowest waiting rank says it for the job; give its line time to get out
        exits.quiet_exit(deadline.EXIT_CODE, GRACE_S)
    return line
