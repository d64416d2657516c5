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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import addresses, config, protocol
from .deadline import deadline
from .errors import ConfigError, TierError


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
    #: several jobs share the tier: their leaders' claims check the count (hvd_ps.placement)
    shared: bool = False
    kv: Any = None
    mode: Optional[str] = None
    keys: Dict[int, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)

    @property
    def where(self) -> str:
        return f"PS tier at {self.uri}:{self.port} ({self.num_servers} server(s))"

    def connect(self) -> None:
        """Join the tier as a worker. Waits for every leader and server, within the timeout."""
        import mxnet as mx

        # several jobs may share one tier: it then has more workers than this job has groups
        workers = self.cfg.ps_num_workers or self.num_groups
        host = self.cfg.node_host or addresses.route_address(self.uri)
        config.set_worker_environment(self.uri, self.port, self.num_servers, workers, host)
        what = f"group {self.group_id}'s leader connecting to the {self.where}"
        with deadline(what + " (are all servers and leaders up?)", self.cfg.timeout):
            try:
                self.kv = mx.kv.create("dist_async")
            except mx.base.MXNetError as err:
                raise TierError(f"{what} failed: {err}") from None
        if self.kv.num_workers < self.num_groups and not self.shared:
            raise TierError(
                f"the {self.where} expects {self.kv.num_workers} leaders, but there are "
                f"{self.num_groups} groups (this job's, or HVD_PS_TOTAL_GROUPS when jobs share it)"
            )

    @property
    def ps_rank(self) -> int:
        return int(self.kv.rank)

    def barrier(self, what: str) -> None:
        with deadline(f"PS barrier of the leaders ({what})", self.cfg.timeout):
            self.kv._barrier()

    def set_mode(self, mode: str) -> None:
        """Make the servers sync (rounds of one push per group) or async. Once per job."""
        if mode not in ("sync", "async"):
            raise ConfigError(f"mode={mode!r} must be 'sync' or 'async'")
        if self.mode is not None:
            if self.mode != mode:
                raise ConfigError(
                    f"the PS tier of this job already runs in {self.mode} mode; all trainers "
                    f"of one job must use the same mode (asked for {mode})"
                )
            return
        if mode == "sync" and self.ps_rank == 0:
            with deadline(f"switching the {self.where} to sync mode", self.cfg.timeout):
                self.kv._send_command_to_servers(protocol.SYNC_MODE_HEAD, "")
        self.mode = mode
        self.barrier(f"switching to {mode} mode")

    def register(self, name: str, initial: Any, rule: protocol.Rule) -> int:
        """A new key for a fused buffer: set its servers' rule and its initial value."""
        import mxnet as mx

        key = len(self.keys)
        self.keys[key] = name
        self.command(key, rule)
        with deadline(f"initialising PS key {key} ({name}) on the {self.where}", self.cfg.timeout):
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
            scratch = mx.nd.empty(initial.shape, dtype=initial.dtype)
            self.kv.pull(key, out=scratch)
            scratch.wait_to_read()
        return key

    def command(self, key: int, rule: protocol.Rule) -> None:
        """Tell every server how to apply pushes to ``key`` (a record of hvd_ps.protocol)."""
        body = protocol.Command(key, rule).encode()
        # waits for every server's reply: a dead server would block it for ever
        what = f"sending the {rule.updater!r} updater of PS key {key} to the {self.where}"
        with deadline(what, self.cfg.timeout):
            self.kv._send_command_to_servers(protocol.CONTROLLER_HEAD, body)

    def push(self, key: int, value: Any) -> None:
        """Push ``value`` to ``key`` without waiting. A later pull of the key is ordered after
        it (and, in sync mode, after the round it belongs to closes)."""
        self.kv.push(key, value)
        self.stats.bytes_pushed += value.size * np.dtype(value.dtype).itemsize

    def exchange(self, key: int, push: Optional[Any], pull: Any, wait: bool = True) -> None:
        """Push ``push`` (if given) to ``key``, then pull the key's value into ``pull``.

        With ``wait=False`` both are only queued on MXNet's engine (transfers of several keys
        then overlap); anything reading ``pull`` runs after the pull, and :meth:`wait` bounds
        the wait for it. The pull is ordered after the push, and in sync mode the push
        completes only when its round closes.
        """
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
        with deadline(what, self.cfg.timeout):
            for a in arrays:
                a.wait_to_read()
        from .fusion import check_engine_errors

        check_engine_errors()  # a fused op of the exchange that failed on the engine
        self.stats.seconds += time.perf_counter() - start

    def close(self) -> None:
        """Leave the tier (ps-lite's exit barrier over all leaders)."""
        if self.kv is None:
            return
        with deadline(
            f"leaving the {self.where} (waiting for the other leaders)", self.cfg.timeout
        ):
            kv, self.kv = self.kv, None
            del kv
