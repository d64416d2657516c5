"""Sync rounds that close without the straggler: a quorum trainer's rounds, on a leader.

A sync trainer with ``quorum=q`` (fewer than its groups) has one rounds key on the servers
(:class:`hvd_ps.ps.protocol.Rounds`), which decides which groups' pushes each round holds, and
per server one commit key per group (:class:`hvd_ps.ps.protocol.WireCommit`), which applies the
rounds it decided to that server's shards and answers the leader that pushed to it. Exchange
``k`` of such a trainer, on its leader:

1. if the round that holds its previous push was still open at that exchange's step 5 (the
   push was late), waits until it closed and has the servers apply it
   (:meth:`Rounds.before_push`): a group has at most one push waiting on the servers;
2. pushes its parts to its own wire keys (the shards keep them until a round applies them)
   and waits until every server has them;
3. reports exchange ``k`` to the rounds key, which puts it in the open round;
4. waits, looking at the report's answer, then polling the rounds key 1 to 50 ms apart,
   until that round is closed, unless a group is *ahead* of it: one that reported exchange
   ``k`` in a round closed already, or a later exchange. The open round closes when every
   group still training reported, or when ``q`` of them did and the grace passed since the
   ``q``-th report; each poll is a push, so the servers read their clock then;
5. pushes the rounds record to every commit key: each server applies the rounds closed that it
   has not applied, in order, with the members the record names, then writes this leader's
   reply (the change of the state since its copy) into its wire key;
6. pulls its replies.

A group that stopped waiting at 4 because another was ahead is *late*: its push joins the open
round and is applied there, exactly once, with that round's members, and its leader takes the
state as of the rounds closed so far. Groups that are ahead never wait for one that is behind,
and a group waits only for groups that will push the same exchange before it (a script's
collective across groups after a step can therefore never hold a round open). A group done
training (``hvd_ps.shutdown``) no longer counts, and its leader applies the rounds closed
then, so the last late push is applied too. A checkpoint closes the open round once every
group reported its exchanges (:meth:`Rounds.flush`), whoever is in it, so that the state it
saves holds every push; a resumed run's rounds key learns each group's last exchange
(:meth:`Rounds.resume`). Every wait is bounded by ``HVD_PS_TIMEOUT``; the
error names the groups that did not report.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from ..errors import TierError
from . import protocol
from .clock import FIRST_POLL, LAST_POLL

#: how many exchanges a leader remembers the rounds of (:attr:`Rounds.history`)
HISTORY = 4096


class Rounds:
    """One quorum trainer's rounds on a leader: group ``gid`` of ``record.groups``, the key
    ``name`` registered through ``client`` (:class:`hvd_ps.ps.client.Client`) on server 0.
    ``commit(view, answer)`` pushes a rounds record to every commit key and waits (with
    ``answer``, asking for this leader's replies), returning per shard the rounds its server
    had applied; the trainer's wire sets it."""

    def __init__(self, client: Any, name: str, gid: int, record: protocol.Rounds) -> None:
        import mxnet as mx

        self.client, self.gid, self.record = client, gid, record
        self.timeout = float(client.cfg.settings.timeout)
        size = record.size
        self.view = mx.nd.zeros((size,))
        self.send = mx.nd.zeros((size,))
        self.key = client.register(name, mx.nd.zeros((size,)), record, out=self.view, server=0)
        self.commit: Optional[Callable[[Any, bool], List[int]]] = None
        #: the round this group's last report joined
        self.placed = 0
        #: whether the round of this group's last push was applied on every server already
        self.settled = True
        #: its pushes that did not wait for their round (a group was ahead)
        self.late = 0
        self.wait_s = 0.0
        self.finished = False
        #: per exchange (the last :data:`HISTORY`): its seq, the round it joined, and per shard
        #: the rounds applied when its reply was written
        self.history: Deque[Tuple[int, int, Tuple[int, ...]]] = deque(maxlen=HISTORY)
        #: an overlapped exchange reports and polls from a thread of its own
        self.lock = threading.Lock()

    def _push(self, kind: int, seq: int = 0) -> Any:
        row = np.zeros(self.record.size, np.float32)
        row[:3] = (kind, self.gid, seq)
        with self.lock:
            self.send[:] = row  # on MXNet's engine: after the previous push read it
            self.client.exchange(self.key, self.send, self.view, wait=True)
            return self.view.asnumpy()

    def _wait(
        self, until: Callable[[Any], bool], seq: int, what: str, start: float, view: Any = None
    ) -> Any:
        """Poll the rounds key until ``until(view)`` (``view``, if given, is the key's state
        just read: no poll then if it already holds); the view then."""
        if view is None:
            view = self._push(protocol.ROUND_POLL)
        pause = FIRST_POLL
        while not until(view):
            if time.monotonic() - start > self.timeout:
                self._stalled(view, seq, what)
            time.sleep(pause)
            pause = min(2 * pause, LAST_POLL)
            view = self._push(protocol.ROUND_POLL)
        return view

    def before_push(self, seq: int, what: str) -> None:
        """Before exchange ``seq``'s pushes: the round holding this group's previous push
        closed and applied on every server (at most one push of a group waits there). Costs
        nothing when that round had closed at the previous exchange's commit."""
        if self.settled:
            return
        start, placed = time.monotonic(), self.placed
        view = self._wait(lambda v: int(v[0]) >= placed, seq, what, start)
        assert self.commit is not None
        self.commit(view, False)
        self.settled = True
        self.wait_s += time.monotonic() - start

    def ahead(self, view: Any, seq: int) -> bool:
        """Whether another group reported exchange ``seq`` in a closed round, or a later one."""
        g, head = self.record.groups, protocol.ROUND_HEAD
        open_, last = view[head + g : head + 2 * g], view[head + 2 * g : head + 3 * g]
        return any(
            last[j] > seq or (last[j] == seq and open_[j] == 0) for j in range(g) if j != self.gid
        )

    def close(self, seq: int, what: str) -> None:
        """Report this group's exchange ``seq`` (its pushes are on every server), wait until
        the round it joined closed (or a group is ahead), then have every server apply the
        rounds closed and answer this leader."""
        start = time.monotonic()
        view = self._push(protocol.ROUND_REPORT, seq)
        self.placed = placed = int(view[protocol.ROUND_HEAD + self.gid])
        view = self._wait(
            lambda v: int(v[0]) >= placed or self.ahead(v, seq), seq, what, start, view
        )
        # the commit below applies every round closed, so the next push waits for nothing
        # unless this one's round is still open (a late push)
        self.settled = int(view[0]) >= placed
        if not self.settled:
            self.late += 1
        assert self.commit is not None
        applied = self.commit(view, True)
        self.history.append((seq, placed, tuple(applied)))
        self.wait_s += time.monotonic() - start

    def flush(self, what: str) -> int:
        """A checkpoint, once every group reported its exchanges (the caller's barrier): the
        open round closes now, whoever reported in it, and the servers apply every round
        closed, so no push waits on them. Returns the rounds closed (each leader may flush:
        the first closes the round, the others find none open)."""
        start = time.monotonic()
        view = self._push(protocol.ROUND_FLUSH)
        assert self.commit is not None
        self.commit(view, False)
        self.settled = True
        self.wait_s += time.monotonic() - start
        return int(view[0])

    def resume(self, seq: int) -> None:
        """A checkpoint was loaded: this group's last exchange was ``seq`` (on a rounds key
        that has closed no round of it: its next report is ``seq + 1``)."""
        self._push(protocol.ROUND_RESUME, seq)

    def _stalled(self, view: Any, seq: int, what: str) -> None:
        g = self.record.groups
        reported = view[protocol.ROUND_HEAD + g : protocol.ROUND_HEAD + 2 * g]
        missing = [str(j) for j in range(g) if reported[j] == 0 and j != self.gid]
        raise TierError(
            f"{what}: group {self.gid}'s exchange {seq} waited {self.timeout:g} s "
            f"(HVD_PS_TIMEOUT) for round {int(view[0]) + 1} to close: it needs "
            f"{self.record.quorum} group(s), and group(s) {', '.join(missing) or 'none'} did "
            "not report; is a group stalled or dead?"
        )

    def finish(self) -> None:
        """This group trains no more: rounds stop waiting for it, and the servers apply the
        rounds closed (idempotent). After its last exchange completed (a report after it is
        refused)."""
        if self.finished:
            return
        self.finished = True
        view = self._push(protocol.ROUND_DONE)
        if self.commit is not None:
            self.commit(view, False)

    def stats(self) -> Dict[str, float]:
        return {"late_pushes": self.late, "quorum_wait_s": self.wait_s}


def commit_bases(servers: List[int], keys: List[int]) -> Dict[int, List[int]]:
    """The state keys of a trainer's shards (``keys``, each on ``servers[i]``) by server."""
    out: Dict[int, List[int]] = {}
    for server, key in zip(servers, keys):
        out.setdefault(server, []).append(key)
    return out
