"""A leader's buckets on the compressed wire (``int8``, ``int4``; the format and the servers'
side are in :mod:`hvd_ps.ps.protocol`).

Each bucket is cut into shards, each a whole key on one server (below MXNet's big-array bound,
placed round robin over the servers): a float32 *state key* (the servers' state, read for the
global model) and *wire keys* (sync: one for all groups; async: one per group, each leader using
its own). A leader keeps, per bucket, its copy of the servers' state (``shadow``, which the
strategies read as what they pulled) and its residual; every exchange it

1. encodes what its strategy sends plus the residual into one wire buffer and pushes each shard's
   part (:meth:`Channel.push`);
2. in sync mode, waits until its pushes were applied and meets the other leaders at a ps-lite
   barrier (:meth:`~.wire_exchange.Wire.settle`): every shard has then closed the round and
   holds its reply;
3. pulls the reply of every shard and adds it to its copy, checking it answers this exchange
   (:meth:`Channel.pull`).

In async mode the servers answer a push at once, so the pull is queued right behind it, and a
group that rejoins (its leader died) reads each shard's state through the shard's rejoin key,
which also makes the servers' shadow of its copy that state (:meth:`Channel.rejoin`).
"""

from __future__ import annotations

import secrets
from typing import Any, Dict, List, Tuple

import mxnet as mx
import numpy as np

from ...errors import TierError
from ...ps import codec, protocol
from .fusion import FusedBuffer, WireCodec
from .interfaces import PSClient
from .strategies.base import Send

#: how often a rejoining leader asks for a shard's state before it gives up
REJOIN_TRIES = 5


class Channel:
    """One bucket of ``initial.size`` float32 elements on the compressed wire of a leader.

    ``first_server``: the server of the first shard (the next ones follow round robin), so
    that a trainer's buckets spread their shards over the servers."""

    def __init__(
        self,
        client: PSClient,
        name: str,
        initial: Any,
        inner: protocol.Rule,
        mode: str,
        groups: int,
        group: int,
        first_server: int,
        bits: int,
    ) -> None:
        settings = client.cfg.settings
        self.bits = bits  # the trainer's wire (its wire= argument, else HVD_PS_WIRE_DTYPE)
        self.block = settings.wire_block
        self.feedback = settings.wire_feedback
        self.client, self.mode, self.group = client, mode, group
        n = int(initial.size)
        limit = protocol.shard_limit(self.bits, self.block, settings.kvstore_bound)
        cut = protocol.shards(n, self.block, limit, client.num_servers)
        self.codec = WireCodec(
            [0] + [hi for _, hi in cut], self.bits, self.block, settings.fusion_threads
        )
        #: the servers' initial state: float32 whatever the parameters' dtype
        self.initial = initial.astype("float32", copy=True)
        #: the leader's copy of the servers' state (what its strategy reads as pulled)
        self.shadow = self.initial.copy()
        self.residual = mx.nd.zeros((n,), dtype="float32")
        # the parts travel as float32 elements (MXNet's servers take float arrays only, and
        # may convert any other dtype)
        self.sent = mx.nd.zeros((self.codec.nbytes // 4,), dtype="float32")
        self.reply = mx.nd.zeros((self.codec.nbytes // 4,), dtype="float32")
        self.name = name
        self.state_keys: List[int] = []
        self.wire_keys: List[int] = []  # this leader's, per shard
        self.rejoin_keys: List[int] = []  # async: per shard
        self.records: List[protocol.WireState] = []
        self.shard_servers: List[int] = []
        #: checkpoints' companion keys: (shard, leaf) -> (key, the rule it was last given)
        self.companions: Dict[Tuple[int, int], Tuple[int, protocol.CopyState]] = {}
        self.servers = client.num_servers
        offs = [o // 4 for o in self.codec.offsets]  # in float32 elements
        self.views = [(offs[j], offs[j + 1]) for j in range(len(cut))]
        self.cut = cut
        for j, (lo, hi) in enumerate(cut):
            server = (first_server + j) % self.servers
            record = protocol.WireState(inner, self.bits, self.block, groups, mode, hi - lo)
            state = client.register(f"{name}.{j}", self.initial[lo:hi], record, server=server)
            self.state_keys.append(state)
            self.records.append(record)
            self.shard_servers.append(server)
            part = codec.empty_reply(hi - lo, self.bits, self.block)
            empty = mx.nd.array(part.view(np.float32), dtype="float32")
            senders = [-1] if mode == "sync" else list(range(groups))
            for g in senders:  # every leader registers every key, so all agree on the ids
                wire = protocol.WireKey(state, g)
                key = client.register(
                    f"{name}.{j}.wire{'' if g < 0 else g}", empty, wire, server=server
                )
                if g < 0 or g == group:
                    self.wire_keys.append(key)
            if mode == "async":  # a group that rejoins reads the state here (protocol)
                extra = mx.nd.zeros((hi - lo + protocol.REJOIN_EXTRA,), dtype="float32")
                rule = protocol.WireRejoin(state, hi - lo)
                key = client.register(f"{name}.{j}.rejoin", extra, rule, server=server)
                self.rejoin_keys.append(key)

    @property
    def nbytes(self) -> int:
        """Bytes of one push (and of one pull): every shard's part."""
        return self.codec.nbytes

    def adopt(self) -> None:
        """ps-lite's rank 0 leader: make each shard's state its initial value (a push to the
        state key, whose rule adopts what ``kv.init`` stored)."""
        for key, (lo, hi) in zip(self.state_keys, self.cut):
            self.client.push(key, self.initial[lo:hi])

    def rejoin(self, tries: int = REJOIN_TRIES) -> None:
        """A leader whose group rejoins the tier (async): its copy becomes the servers' state,
        and the servers' shadow of it that same copy, shard by shard; the residual starts at
        zero (the old leader's died with it). Two groups rejoining at once may overwrite each
        other's copy on a shard's rejoin key: the request read back says whose it is, and a
        leader that finds another's asks again, up to ``tries`` times."""
        extra = protocol.REJOIN_EXTRA
        for key, (lo, hi) in zip(self.rejoin_keys, self.cut):
            n = hi - lo
            out = mx.nd.zeros((n + extra,), dtype="float32")
            for _ in range(tries):
                nonce = secrets.randbits(32)
                request = codec.rejoin_request(self.group, nonce, self.bits, self.block, n)
                push = np.zeros(n + extra, np.float32)
                push[n:] = request.view(np.float32)
                self.client.push(key, mx.nd.array(push, dtype="float32"))
                self.client.exchange(key, None, out)
                if codec.as_bytes(out[n:].asnumpy()).tobytes() == request.tobytes():
                    self.shadow[lo:hi] = out[:n]
                    break
            else:
                raise TierError(
                    f"group {self.group} could not read shard {key}'s state to rejoin: other "
                    f"groups' rejoins overwrote it {tries} times in a row"
                )
        self.residual[:] = 0.0

    def push(self, src: Any, seq: int) -> None:
        """Encode ``src`` (float32, the bucket's size) plus the residual, push every shard."""
        if not self.feedback:
            self.residual[:] = 0.0
        self.codec.encode(src, self.residual, self.sent, self.sender, seq)
        self._push_parts()

    def push_send(self, send: Send, out: Any, seq: int) -> None:
        """Encode what ``send`` describes plus the residual, push every shard: the fused op's
        one pass over a float32 :class:`~.fusion.FusedBuffer` (``out`` gets the value too if
        ``send.keep``); for another front end's buffer, its ``pack_axpby`` into ``out``, then
        the encode."""
        if not self.feedback:
            self.residual[:] = 0.0
        src = send.src
        if isinstance(src, FusedBuffer) and src.dtype == np.float32:
            keep = out if send.keep else None
            self.codec.encode_axpby(
                src, send.ref, send.alpha, send.beta, self.residual, self.sent, self.sender, seq,
                out=keep,
            )  # fmt: skip
        else:
            src.pack_axpby(send.ref, send.alpha, send.beta, out=out)
            self.codec.encode(out, self.residual, self.sent, self.sender, seq)
        self._push_parts()

    @property
    def sender(self) -> int:
        return self.group if self.group >= 0 else 0

    def _push_parts(self) -> None:
        for key, (a, b) in zip(self.wire_keys, self.views):
            self.client.push(key, self.sent[a:b])

    def pull(self, seq: int) -> None:
        """Pull every shard's reply and add it to :attr:`shadow` (it must answer ``seq``)."""
        for key, (a, b) in zip(self.wire_keys, self.views):
            self.client.exchange(key, None, self.reply[a:b], wait=False)
        self.codec.decode_add(self.shadow, self.reply, seq)

    # -- checkpoints -------------------------------------------------------------------------
    def leaves(self) -> int:
        """How many state arrays each shard's servers keep (their state, the shadows, the
        inner rule's state): :class:`hvd_ps.ps.protocol.WireState`'s layout."""
        return len(self.records[0].state_layout())

    def _companion(self, j: int, leaf: int, rule: protocol.CopyState, initial: Any) -> int:
        """The key that carries shard ``j``'s state array ``leaf`` (on that shard's server),
        registered with ``initial`` on first use, commanded again when its rule changes."""
        known = self.companions.get((j, leaf))
        if known is None:
            name = f"{self.name}.{j}.state{leaf}"
            key = self.client.register(name, initial, rule, server=self.shard_servers[j])
        else:
            key = known[0]
            if known[1] != rule:
                self.client.command(key, rule)
        self.companions[(j, leaf)] = (key, rule)
        return key

    def save_state(self, value: Any, leaves: List[Any], mine: bool) -> None:
        """Queue the pulls of the servers' state into ``value`` and of each state array into
        ``leaves`` (bucket-sized float32 arrays): pushes to companion keys make the servers
        copy them there. Every leader calls it (the keys are registered in the same order);
        only the one that writes them (``mine``) pushes and pulls."""
        if mine:
            self.read_state(value, value)
        for leaf in range(self.leaves()):
            for j, (key, (lo, hi)) in enumerate(zip(self.state_keys, self.cut)):
                zeros = mx.nd.zeros((hi - lo,), dtype="float32")
                companion = self._companion(j, leaf, protocol.CopyState(key, leaf), zeros)
                if mine:
                    self.client.push(companion, zeros)
                    self.client.exchange(companion, None, leaves[leaf][lo:hi], wait=False)

    def load_state(self, leaves: List[Any], count: int) -> List[Any]:
        """Copy each state array (bucket-sized numpy arrays, in layout order) into the
        servers; ``count`` is how many exchanges the shards' rules have seen. Returns what to
        wait for."""
        pushed = []
        for leaf, value in enumerate(leaves):
            for j, (key, (lo, hi)) in enumerate(zip(self.state_keys, self.cut)):
                initial = mx.nd.array(value[lo:hi], dtype="float32")
                rule = protocol.CopyState(key, leaf, load=True, count=count)
                companion = self._companion(j, leaf, rule, initial)
                zeros = mx.nd.zeros((hi - lo,), dtype="float32")
                self.client.push(companion, zeros)
                out = mx.nd.zeros((hi - lo,), dtype="float32")
                self.client.exchange(companion, None, out, wait=False)
                pushed.append(out)
        return pushed

    def read_state(self, out: Any, scratch: Any) -> None:
        """The servers' state (the global model, float32) into ``out``: a push to each state
        key makes its rule copy the state there (``scratch``'s content is ignored), then a pull
        reads it. Costs a float32 model each way: for evaluation, not training."""
        for key, (lo, hi) in zip(self.state_keys, self.cut):
            self.client.push(key, scratch[lo:hi])
            self.client.exchange(key, None, out[lo:hi], wait=False)
