"""A trainer's exchanges on the compressed wire (``int8``, ``int4``), as its schedule runs them
(:mod:`~.schedule`): every bucket's :class:`~.wire.Channel` together, the sync rounds' barrier,
and the steps of one exchange.

1. :meth:`Wire.push`: each bucket encodes what its strategy sends (with the strategy's math in
   the same pass where it has one) and pushes its shards; in async mode the pulls of the
   servers' replies are queued right behind, and an overlapped sync exchange hands its round's
   barrier and pulls to a thread of its own (:class:`Settler`), so the training steps hide them;
2. :meth:`Wire.finish`: in sync mode the round's barrier and the pulls (unless a settler or a
   checkpoint did them), then the wait, then the strategy applies the reply to each bucket.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ... import private_api
from ...deadline import deadline
from ...ps import protocol
from ...ps.rounds import Rounds, commit_bases
from .buckets import Bucket
from .interfaces import PSClient
from .strategies.base import Exchange
from .wire import Channel


class Wire:
    """Every compressed bucket of one trainer on a leader, the sync rounds' barrier, and the
    steps of an exchange."""

    def __init__(
        self,
        client: PSClient,
        mode: str,
        bits: int,
        quorum: Optional[protocol.Rounds] = None,
    ) -> None:
        self.client, self.mode, self.bits = client, mode, bits
        #: sync rounds closed by a quorum (:mod:`hvd_ps.ps.rounds`): their record, then (at
        #: :meth:`start`) the leader's rounds and its commit keys, one per server: (server,
        #: key, what it pushes, what it pulls)
        self.quorum = quorum
        self.rounds: Optional[Rounds] = None
        self.commits: List[Any] = []
        self.channels: List[Channel] = []
        self.next_server = 0
        #: an overlapped sync exchange's round, settling on a thread of its own
        self.settler: Optional[Settler] = None
        #: the reply of the exchange in flight is in the leaders' copies already
        self.pulled = False

    def open(
        self, name: str, initial: Any, inner: protocol.Rule, groups: int, group: int
    ) -> Channel:
        mode = "quorum" if self.quorum is not None else self.mode
        args = (mode, groups, group, self.next_server, self.bits)
        ch = Channel(self.client, name, initial, inner, *args)
        self.next_server = (self.next_server + len(ch.cut)) % ch.servers
        self.channels.append(ch)
        return ch

    def start(self, name: str) -> None:
        """After every channel is open: a quorum's rounds key (``name``) and commit keys;
        ps-lite rank 0 adopts the initial values, and every leader waits for that at a
        barrier (a rejoined leader finds them adopted long ago)."""
        if self.quorum is not None:
            import mxnet as mx

            record = self.quorum
            self.rounds = self.client.quorum_rounds(f"{name}rounds", record)
            self.rounds.commit = self.commit
            servers = [s for ch in self.channels for s in ch.shard_servers]
            keys = [k for ch in self.channels for k in ch.state_keys]
            group = self.channels[0].group
            for server, bases in sorted(commit_bases(servers, keys).items()):
                rule = protocol.WireCommit(tuple(bases), record.groups, record.window)
                # one per group, so that what a leader pulls answers its own push (every leader
                # registers every key, so all agree on the ids)
                for g in range(record.groups):
                    zeros = mx.nd.zeros((record.size,))
                    name_g = f"{name}commit{server}.{g}"
                    key = self.client.register(name_g, zeros, rule, server=server)
                    if g == group:
                        self.commits.append((server, key, mx.nd.zeros((record.size,)), zeros))
        if self.client.rejoined:
            return
        if self.client.ps_rank == 0:
            for ch in self.channels:
                ch.adopt()
            with deadline("adopting the compressed shards' state", self.timeout):
                for ch in self.channels:
                    private_api.wait_to_write(ch.initial)  # pushes done once answered
        self.client.barrier("compressed shards set up")

    @property
    def timeout(self) -> float:
        return float(self.client.cfg.settings.timeout)

    def settle(self, what: str, seq: int) -> None:
        """Sync: wait until this leader's pushes (of exchange ``seq``) were applied, then
        meet the other leaders; after it every shard has closed the round and holds its
        reply. With a quorum: report the exchange, wait for its round to close, and have
        every server apply the rounds closed (:mod:`hvd_ps.ps.rounds`). Async: nothing."""
        if self.mode != "sync":
            return
        with deadline(f"{what}: the servers' answer to this leader's pushes", self.timeout):
            for ch in self.channels:
                private_api.wait_to_write(ch.sent)  # its pushes are done once answered
        if self.rounds is None:
            self.client.barrier(what)
            return
        self.rounds.close(seq, what)

    def commit(self, view: Any, answer: bool) -> List[int]:
        """Push a rounds record (as pulled) to every commit key: each server applies the
        rounds closed that it has not, and with ``answer`` writes this leader's replies.
        Returns, per shard (in the channels' order), the rounds its server had applied."""
        assert self.rounds is not None
        record = np.asarray(view, np.float32).copy()
        record[protocol.ROUND_HEAD - 1] = self.rounds.gid + 1 if answer else 0
        outs = []
        for _, key, send, out in self.commits:
            send[:] = record
            self.client.exchange(key, send, out, wait=False)
            outs.append(out)
        self.client.wait(outs, "the servers applying the rounds closed")
        applied = {c[0]: int(out[0].asscalar()) for c, out in zip(self.commits, outs)}
        return [applied[s] for ch in self.channels for s in ch.shard_servers]

    def flush_rounds(self, what: str) -> Optional[int]:
        """A checkpoint (collective over the leaders, every exchange settled): with a quorum,
        the open round closed and every round applied, so the servers' state holds every push
        (:meth:`~hvd_ps.ps.rounds.Rounds.flush`); returns the rounds closed (None: no quorum)."""
        if self.rounds is None:
            return None
        self.client.barrier(f"{what}: every leader reported its exchanges")
        return self.rounds.flush(what)

    def resume_rounds(self, exchanges: int) -> None:
        """A checkpoint was loaded: with a quorum, the rounds key learns that this group's
        last exchange was ``exchanges``."""
        if self.rounds is not None:
            self.rounds.resume(exchanges)

    @property
    def bytes_per_exchange(self) -> int:
        return sum(ch.nbytes for ch in self.channels)

    # -- one exchange ---------------------------------------------------------------------------
    def push(self, run: Exchange, buckets: List[Bucket], seq: int, blocking: bool) -> None:
        """Exchange ``seq``: what each bucket sends, encoded and pushed (from the parameters if
        ``blocking``, else from the snapshot); async: the pulls of the replies queued behind;
        overlapped sync: a :class:`Settler` for the round. With a quorum, first the round of
        this leader's previous push (:meth:`~hvd_ps.ps.rounds.Rounds.before_push`)."""
        if self.rounds is not None:
            self.rounds.before_push(seq, f"PS exchange {seq} (its previous round)")
        for b, ch in zip(buckets, self.channels):
            send = run.wire_send(b, b.params if blocking else b.snapshot(), blocking)
            if send is None:  # the strategy left it in b.out
                ch.push(b.out, seq)
            else:  # its math, the residual and the codes in one pass
                ch.push_send(send, b.out, seq)
        if self.mode == "async":
            for ch in self.channels:
                ch.pull(seq)
        elif not blocking:
            self.settler = Settler(self, seq, f"PS exchange {seq} (sync round)")

    def join_settler(self) -> bool:
        """Wait for the round a settler pulls (bounded); False if there was none."""
        settler, self.settler = self.settler, None
        if settler is None:
            return False
        settler.join()
        return True

    def finish(
        self,
        run: Exchange,
        buckets: List[Bucket],
        seq: int,
        what: str,
        blocking: bool,
        wait: Callable[[str], None],
    ) -> None:
        """Exchange ``seq``, after :meth:`push`: (sync) the round's barrier and the pulls,
        unless a settler or a checkpoint did them; ``wait(what)`` for the pulls; the
        strategy applies the reply to every bucket."""
        pulled = self.join_settler() or (self.pulled and not blocking)
        if self.mode == "sync" and not pulled:
            self.settle(what, seq)
            for ch in self.channels:
                ch.pull(seq)
        wait(what)
        for b in buckets:
            run.wire_apply(b, blocking)

    def settle_flight(self, seq: int) -> None:
        """A checkpoint of an overlapped exchange ``seq`` in flight: its reply pulled into the
        copies now (sync; async replies are queued behind the push already). It is applied at
        its step as before."""
        if self.pulled:
            return
        self.pulled = True
        if self.join_settler():
            return
        if self.mode == "sync":
            self.settle("checkpoint: the exchange in flight", seq)
            for ch in self.channels:
                ch.pull(seq)

    def read_global(self, buckets: List[Bucket], flats: List[Any], scale: float) -> None:
        """The servers' state (the global model, float32) into ``flats`` and, times ``scale``,
        into every bucket's parameters (queued; the caller waits for ``flats``). An exchange in
        flight stays: its round's pulls, if a settler queued them, count as done."""
        if self.join_settler():
            self.pulled = True
        for b, ch, flat in zip(buckets, self.channels, flats):
            ch.read_state(flat, flat)
            b.params.unpack(flat, alpha=scale)

    def state_arrays(self, buckets: List[Bucket]) -> Dict[str, Any]:
        """Each bucket's copy of the servers' state and residual, by checkpoint name."""
        out = {}
        for b, ch in zip(buckets, self.channels):
            out[f"wire/{b.index}/shadow"] = ch.shadow
            out[f"wire/{b.index}/residual"] = ch.residual
        return out


class Settler:
    """An overlapped sync exchange's :meth:`Wire.settle` and pulls of sequence ``seq``, on a
    thread of its own: the leader's training steps go on while its round closes and the
    replies come back; :meth:`join` (at the exchange's step) waits for it, within
    ``HVD_PS_TIMEOUT``, and raises what failed there."""

    def __init__(self, wire: Wire, seq: int, what: str) -> None:
        self.wire, self.seq, self.what = wire, seq, what
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="hvd_ps-settle", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.wire.settle(self.what, self.seq)
            for ch in self.wire.channels:
                ch.pull(self.seq)
        except BaseException as err:  # raised again by join(), on the training thread
            self.error = err

    def join(self) -> None:
        with deadline(f"{self.what}: the leaders' barrier and pulls", self.wire.timeout):
            self.thread.join()
        if self.error is not None:
            raise self.error
