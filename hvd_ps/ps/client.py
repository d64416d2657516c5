"""The PS client of a group leader: connect, fused keys, push/pull/exchange, with timeouts.

Only leaders create a dist KVStore, with ``DMLC_NUM_WORKER`` = number of groups. Each fused
buffer is one integer key; all leaders register their keys in the same order (the program is
the same on every rank), and the trainer checks their shapes and dtypes agree before the first
push. ps-lite's worker ranks follow registration order, not group ids: :attr:`Client.ps_rank`
is this leader's ps-lite rank, which decides who sends the tier-wide commands (sync mode) and
who pushes a key's initial value (``kv.init``).

Round safety: MXNet's sync server closes a round when it has counted as many pushes as there
are workers, not one push from each worker, so a leader must never push a key twice in a
round. :meth:`Client.exchange` pushes, then pulls into a buffer whose write depends on the
push's completion, and waits; the push completes only when its round closes, so a leader can
never push the same key twice in one round, however far ahead it runs.

On a tier with a roster (``hvdps-run --servers-only``, :mod:`hvd_ps.ps.roster`) the leader holds
a lease there from :meth:`Client.connect` to :meth:`Client.close`. A leader that rejoins after
its group died (:attr:`Client.rejoined`) takes the dead node's place in ps-lite and must not
disturb the others: it passes no barrier, sends no rule and no initial value, and reads every
key's current value instead. In async mode a leader on such a tier also leaves without
ps-lite's exit barrier, so no group ever waits for one that died.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set

import numpy as np

from .. import addresses, config, private_api, secret
from ..deadline import deadline
from ..errors import ConfigError, TierError
from . import protocol
from .clock import Clock
from .roster import Lease
from .rounds import Rounds


@dataclass
class Stats:
    """Counters of one client (bytes as sent on the wire)."""

    exchanges: int = 0
    bytes_pushed: int = 0
    bytes_pulled: int = 0
    seconds: float = 0.0

    def as_dict(self) -> Dict[str, float]:
        return dict(self.__dict__)


@dataclass
class Client:
    """One leader's connection to the PS tier."""

    uri: str
    port: int
    num_servers: int
    num_groups: int  # groups of every job meeting at the tier
    group_id: int  # the global group id of this leader's group
    cfg: config.Config
    #: several jobs share the tier: their leaders' claims check the count (hvd_ps.ps.placement)
    shared: bool = False
    kv: Any = None
    mode: Optional[str] = None
    #: in sync mode, whether MXNet's servers close the rounds (False: hvd_ps's rules do)
    rounds: bool = True
    keys: Dict[int, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    lease: Optional[Lease] = None  # the place on the tier's roster, if it has one
    #: MXNet's KVStore keeps its per-key buffers in maps without a lock: a compressed sync
    #: wire pulls from a thread of its own while an overlapped exchange is in flight, so every
    #: push and pull takes this lock
    lock: Any = field(default_factory=threading.RLock)
    #: called after every wait: the trainer raises here what failed on MXNet's engine
    #: meanwhile (its fused ops), so a failed op is an error, never stale numbers
    after_wait: Optional[Callable[[], None]] = None
    #: the group clocks of this leader's async trainers (:mod:`hvd_ps.ps.clock`)
    clocks: List[Clock] = field(default_factory=list)
    #: the rounds of this leader's quorum trainers (:mod:`hvd_ps.ps.rounds`)
    quorums: List[Rounds] = field(default_factory=list)

    @property
    def rejoined(self) -> bool:
        """This leader took the place of its group's dead (or departed) predecessor."""
        return self.lease is not None and self.lease.rejoin

    @property
    def where(self) -> str:
        return f"PS tier at {self.uri}:{self.port} ({self.num_servers} server(s))"

    def connect(self) -> None:
        """Join the tier as a worker. Waits for every leader and server, within the timeout."""
        import mxnet as mx

        # several jobs may share one tier: it then has more workers than this job has groups
        workers = self.cfg.wiring.ps_num_workers or self.num_groups
        host = self.cfg.wiring.node_host or addresses.route_address(self.uri)
        roster = self.cfg.wiring.roster
        config.set_worker_environment(
            self.uri, self.port, self.num_servers, workers, host, heartbeats=roster is not None
        )
        what = f"group {self.group_id}'s leader connecting to the {self.where}"
        if roster is not None:
            assert self.cfg.wiring.secret_file is not None  # (config refuses a roster without)
            key = secret.load(self.cfg.wiring.secret_file)
            self.lease = Lease(
                roster, self.group_id, self.num_groups, self.cfg.settings.timeout, key
            )
            # the tier's scheduler registers only nodes a leader holding the secret announced
            port = addresses.free_port(host)
            config.set_node_port(port)
            self.lease.announce(host, port, self.cfg.settings.timeout)
            if self.lease.rejoin:
                # ps-lite answers a node that registers only once it counts the old one dead
                sys.stderr.write(
                    f"hvd_ps: group {self.group_id} rejoins the PS tier and starts from the "
                    f"PS's state; waiting about {self.lease.wait:.0f} s for the tier to count "
                    "its previous leader gone\n"
                )
                sys.stderr.flush()
                time.sleep(self.lease.wait)
                what = f"group {self.group_id}'s leader rejoining the {self.where}"
        with deadline(what + " (are all servers and leaders up?)", self.cfg.settings.timeout):
            try:
                self.kv = mx.kv.create("dist_async")
            except mx.base.MXNetError as err:
                raise TierError(f"{what} failed: {err}") from None
        # before this leader's first key, so no float16 key is ever kept otherwise (idempotent:
        # every leader sends it, and each waits for every server's answer)
        with deadline(
            f"{what}: setting the servers' float32 master copies", self.cfg.settings.timeout
        ):
            private_api.kv_command(self.kv, protocol.MULTI_PRECISION_HEAD, "")
        if self.kv.num_workers < self.num_groups and not self.shared:
            raise TierError(
                f"the {self.where} expects {self.kv.num_workers} leaders, but there are "
                f"{self.num_groups} groups (this job's, or HVD_PS_TOTAL_GROUPS when jobs share it)"
            )

    @property
    def ps_rank(self) -> int:
        return int(self.kv.rank)

    def barrier(self, what: str) -> None:
        with deadline(f"PS barrier of the leaders ({what})", self.cfg.settings.timeout):
            private_api.kv_barrier(self.kv)

    def set_mode(self, mode: str, rounds: bool = True) -> None:
        """Make the servers sync (rounds of one push per group) or async. Once per job.
        ``rounds=False``: a sync job whose rules close the rounds themselves (a compressed
        wire), so MXNet's servers stay in async mode and apply every push as it comes."""
        if mode not in ("sync", "async"):
            raise ConfigError(f"mode={mode!r} must be 'sync' or 'async'")
        if self.mode is not None:
            if self.mode != mode:
                raise ConfigError(
                    f"the PS tier of this job already runs in {self.mode} mode; all trainers "
                    f"of one job must use the same mode (asked for {mode})"
                )
            if mode == "sync" and self.rounds != rounds:
                raise ConfigError(
                    "the sync trainers of one job must all use a compressed wire (int8, int4) "
                    "or none: MXNet's servers close the rounds of float32 and float16 keys, "
                    "hvd_ps's rules those of compressed ones, and a tier does one or the other"
                )
            return
        self.rounds = rounds
        if self.rejoined:
            if mode == "sync":
                raise ConfigError(
                    f"group {self.group_id} rejoined the {self.where}, but its trainer runs in "
                    "sync mode, whose rounds need every group from the start: only async groups "
                    "can rejoin (restart every job of a sync run, e.g. from a checkpoint)"
                )
            self.mode = mode
            return  # the others passed this barrier long ago
        if self.lease is not None:
            self.lease.report_mode(mode)  # a sync group's death is fatal to the others
        if mode == "sync" and rounds and self.ps_rank == 0:
            with deadline(f"switching the {self.where} to sync mode", self.cfg.settings.timeout):
                private_api.kv_command(self.kv, protocol.SYNC_MODE_HEAD, "")
        self.mode = mode
        self.barrier(f"switching to {mode} mode")

    def register(
        self,
        name: str,
        initial: Any,
        rule: protocol.Rule,
        out: Any = None,
        server: Optional[int] = None,
    ) -> int:
        """A new key for a fused buffer: set its servers' rule and its initial value, then
        pull it into ``out`` (if given). A leader that rejoined only pulls: ``out`` then holds
        the key's current value on the PS. ``server``: a key MXNet places whole on that server
        (it must stay below ``MXNET_KVSTORE_BIGARRAY_BOUND`` elements)."""
        import mxnet as mx

        key = self._free_key(server)
        self.keys[key] = name
        size, dtype = int(initial.size), np.dtype(initial.dtype).name
        if self.rejoined:
            assert self.lease is not None
            self.lease.check_key(key, name, size, dtype)
        else:
            self.command(key, rule)
            if self.lease is not None:
                self.lease.report_key(key, name, size, dtype)
        with deadline(
            f"initialising PS key {key} ({name}) on the {self.where}", self.cfg.settings.timeout
        ):
            if not self.rejoined:
                self.kv.init(key, initial)
            # MXNet 1.9.1's KVStoreDist caches how a key maps onto the servers the first time
            # the key is used, and fills that cache entry outside its lock: a push fills it on
            # the calling thread (in kv.push), a pull inside its engine op on an engine thread.
            # So a key's first pull still queued when its first push comes (EASGD pulls c and
            # pushes d without waiting in between) fills the entry twice at once, and the next
            # pull of the key aborts the process in ps-lite's receive thread ("Check failed:
            # lens->size() == keys.size() (2 vs. 1)"). kv.init fills it only on ps-lite's rank
            # 0, so every leader pulls the new key once, here, and waits: from then on the
            # entry is only read.
            scratch = mx.nd.empty(initial.shape, dtype=initial.dtype) if out is None else out
            self.kv.pull(key, out=scratch)
            scratch.wait_to_read()
        return key

    def _free_key(self, server: Optional[int]) -> int:
        """The lowest unused key id (every leader registers in the same order, so all agree);
        with ``server``, the lowest that MXNet's KVStore sends to that server when the key is
        below its big-array bound (``key * 9973 % servers``, MXNet 1.9.1's placement)."""
        key = 0
        while key in self.keys or (
            server is not None and (key * 9973) % self.num_servers != server % self.num_servers
        ):
            key += 1
        return key

    def command(self, key: int, rule: protocol.Rule) -> None:
        """Tell every server how to apply pushes to ``key`` (a record of hvd_ps.ps.protocol)."""
        body = protocol.Command(key, rule).encode()
        # waits for every server's reply: a dead server would block it for ever
        what = f"sending the {rule.updater!r} updater of PS key {key} to the {self.where}"
        with deadline(what, self.cfg.settings.timeout):
            private_api.kv_command(self.kv, protocol.CONTROLLER_HEAD, body)

    def push(self, key: int, value: Any) -> None:
        """Push ``value`` to ``key`` without waiting. A later pull of the key is ordered after
        it (and, in sync mode, after the round it belongs to closes)."""
        with self.lock:
            self.kv.push(key, value)
            self.stats.bytes_pushed += value.size * np.dtype(value.dtype).itemsize

    def exchange(self, key: int, push: Optional[Any], pull: Any, wait: bool = True) -> None:
        """Push ``push`` (if given) to ``key``, then pull the key's value into ``pull``.

        With ``wait=False`` both are only queued on MXNet's engine (transfers of several keys
        then overlap); anything reading ``pull`` runs after the pull, and :meth:`wait` bounds
        the wait for it. The pull is ordered after the push, and in sync mode the push
        completes only when its round closes.
        """
        with self.lock:
            if push is not None:
                self.push(key, push)
            self.kv.pull(key, out=pull)
            self.stats.bytes_pulled += pull.size * np.dtype(pull.dtype).itemsize
            self.stats.exchanges += 1
        if wait:
            self.wait([pull], f"PS exchange of key {key} ({self.keys.get(key)})")

    def wait(self, arrays: List[Any], what: str) -> None:
        """Wait for queued pulls into ``arrays``, within ``HVD_PS_TIMEOUT``."""
        start = time.perf_counter()
        what = f"{what} with the {self.where}"
        if self.mode == "sync":
            what += "; a sync round waits for every group's leader"
        with deadline(what, self.cfg.settings.timeout):
            for a in arrays:
                a.wait_to_read()
        if self.after_wait is not None:
            self.after_wait()
        self.stats.seconds += time.perf_counter() - start

    def clock(self, name: str, bound: Optional[int]) -> Clock:
        """A new group clock (PS key ``name``) of an async trainer, waiting at most ``bound``
        exchanges ahead of the slowest live group (None: never); :meth:`finish` ends it."""
        made = Clock(self, name, self.group_id, self.num_groups, bound, self.live_groups)
        self.clocks.append(made)
        return made

    def quorum_rounds(self, name: str, record: protocol.Rounds) -> Rounds:
        """The rounds (PS key ``name``) of a sync trainer closed by a quorum;
        :meth:`finish` tells them this group is done."""
        made = Rounds(self, name, self.group_id, record)
        self.quorums.append(made)
        return made

    def live_groups(self) -> Optional[Set[int]]:
        """The groups the tier's roster counts live (None: no roster, or no answer)."""
        if self.lease is None:
            return None
        return self.lease.live_groups(min(10.0, self.cfg.settings.timeout))

    def finish(self) -> None:
        """This group trains no more: its clocks and rounds hold no other group back."""
        for c in self.clocks:
            c.finish()
        for r in self.quorums:
            r.finish()

    def close(self) -> None:
        """Leave the tier: ps-lite's exit barrier over all leaders, except for async groups
        on a tier with a roster (they leave alone), then the roster's lease."""
        if self.kv is None:
            return
        alone = self.lease is not None and self.mode != "sync"
        if alone:
            private_api.kv_leave_without_barrier(self.kv)
        what = "leaving the " + self.where + ("" if alone else " (waiting for the other leaders)")
        with deadline(what, self.cfg.settings.timeout):
            kv, self.kv = self.kv, None
            del kv
        if self.lease is not None:
            self.lease.leave()
