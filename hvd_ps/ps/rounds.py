"""Sync rounds that close without the straggler: a quorum trainer's rounds, on a leader.

A sync trainer with ``quorum=q`` (fewer than its groups) has one rounds key on the servers
(:class:`hvd_ps.ps.protocol.Rounds`), which decides which groups' pushes each round holds, and
one commit key per server (:class:`hvd_ps.ps.protocol.WireCommit`), which applies the rounds it
decided to that server's shards. An exchange of such a trainer, on its leader:

1. pushes its parts to its own wire keys (the shards keep them pending) and waits until every
   server has them;
2. reports the exchange to the rounds key, which puts it in the open round;
3. polls the rounds key (1 to 50 ms apart) until that round is closed. The open round closes
   when every group still training reported, or when ``q`` of them did and the grace passed
   since the ``q``-th report; each poll is a push, so the servers' clock is read then;
4. pushes the rounds record it pulled to every commit key: each server applies the rounds it
   has not applied, in order, with the members the record names, and writes each member's
   reply into its wire key;
5. pulls its replies.

A group whose report arrives after its round closed is *late*: its push waits on the servers
and joins the open round, so it is applied exactly once, in the next round that closes, and
its leader gets the state after that round. Every wait is bounded by ``HVD_PS_TIMEOUT``; the
error names the groups that did not report.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import numpy as np

from ..errors import TierError
from . import protocol
from .clock import FIRST_POLL, LAST_POLL
from .rules import read_rounds


class Rounds:
    """One quorum trainer's rounds on a leader: group ``gid`` of ``record.groups``, the key
    ``name`` registered through ``client`` (:class:`hvd_ps.ps.client.Client`) on server 0."""

    def __init__(self, client: Any, name: str, gid: int, record: protocol.Rounds) -> None:
        import mxnet as mx

        self.client, self.gid, self.record = client, gid, record
        self.timeout = float(client.cfg.settings.timeout)
        size = record.size
        self.view = mx.nd.zeros((size,))
        self.send = mx.nd.zeros((size,))
        self.key = client.register(name, mx.nd.zeros((size,)), record, out=self.view, server=0)
        #: the round this group's last report joined
        self.placed = 0
        #: pushes that joined a later round than the one after their group's previous push
        self.late = 0
        self.wait_s = 0.0
        self.finished = False
        #: an overlapped exchange reports and polls from a thread of its own
        self.lock = threading.Lock()

    def _push(self, kind: int, seq: int = 0) -> Any:
        row = np.zeros(self.record.size, np.float32)
        row[:3] = (kind, self.gid, seq)
        with self.lock:
            self.send[:] = row  # on MXNet's engine: after the previous push read it
            self.client.exchange(self.key, self.send, self.view, wait=True)
            return self.view.asnumpy()

    def close(self, seq: int, what: str) -> Any:
        """Report this group's exchange ``seq`` (its pushes are on every server) and wait
        until the round it joined closed. Returns the rounds record pulled then (float32),
        for the commit keys."""
        start = time.monotonic()
        view = self._push(protocol.ROUND_REPORT, seq)
        g = self.record.groups
        placed = int(view[protocol.ROUND_HEAD + self.gid])
        if self.placed and placed > self.placed + 1:
            self.late += 1
        self.placed = placed
        pause = FIRST_POLL
        while int(view[0]) < placed:
            if time.monotonic() - start > self.timeout:
                self._stalled(view, seq, what)
            time.sleep(pause)
            pause = min(2 * pause, LAST_POLL)
            view = self._push(protocol.ROUND_POLL)
        self.wait_s += time.monotonic() - start
        read_rounds(view, g, self.record.window)  # what the commit keys will read, checked
        return view

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
        """This group trains no more: rounds stop waiting for it (idempotent). After its
        last exchange completed (a report after it is refused)."""
        if self.finished:
            return
        self.finished = True
        self._push(protocol.ROUND_DONE)

    def stats(self) -> Dict[str, float]:
        return {"late_pushes": self.late, "quorum_wait_s": self.wait_s}


def commit_bases(servers: List[int], keys: List[int]) -> Dict[int, List[int]]:
    """The state keys of a trainer's shards (``keys``, each on ``servers[i]``) by server."""
    out: Dict[int, List[int]] = {}
    for server, key in zip(servers, keys):
        out.setdefault(server, []).append(key)
    return out
