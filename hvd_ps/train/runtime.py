"""``hvd_ps.init`` / ``hvd_ps.shutdown`` and the topology queries.

``init`` plans the groups, starts Horovod with their process sets, brings up the PS tier
(embedded: global rank 0 starts a scheduler and servers on loopback; or the one named by
``DMLC_PS_ROOT_URI``/``DMLC_PS_ROOT_PORT``) and connects each group's leader to it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from .. import addresses, config, deadline, exits, frameworks, topology
from ..errors import HvdPsError, TierError, TopologyError
from ..launch import rendezvous, spawn
from ..ps import placement
from ..ps.client import Client
from . import calls
from .core.interfaces import InFlight


@dataclass
class Runtime:
    cfg: config.Config
    topo: topology.Topology
    address: Tuple[Any, ...]  # (uri, port, num_servers)
    local: Optional[spawn.LocalTier] = None
    client: Optional[Client] = None
    collectives: int = 0
    #: trainers' schedules with an overlapped exchange in flight: shutdown() completes them
    in_flight: InFlight = field(default_factory=InFlight)
    #: this job's groups took the places of dead ones on the tier (:mod:`hvd_ps.ps.roster`):
    #: their trainers start from the PS's state
    rejoined: bool = False

    def next_name(self, what: str) -> str:
        """A collective's name, identical on every rank (calls happen in program order)."""
        self.collectives += 1
        return f"hvd_ps.{what}.{self.collectives}"


_rt: Optional[Runtime] = None
_lock = threading.Lock()


def init(
    group_size: Optional[int] = None,
    groups: Optional[Sequence[Sequence[int]]] = None,
    *,
    group_offset: Optional[int] = None,
    total_groups: Optional[int] = None,
) -> None:
    """Start hvd_ps: Horovod with one process set per group, and the PS tier.

    Exactly one grouping applies: ``groups`` (explicit partition of all ranks, uneven sizes
    allowed, e.g. ``[[0], [1, 2, 3]]``), ``group_size`` (consecutive ranks, must divide the
    world size), or by default one group per host. Calls ``hvd.init`` itself. Raises
    :class:`~hvd_ps.errors.TopologyError` on every rank for a bad layout, before anything blocks.

    When several jobs share one PS tier (``hvdps-run --servers-only``), ``group_offset`` is
    the global id of this job's first group and ``total_groups`` the number of groups of all
    jobs (default: ``HVD_PS_GROUP_OFFSET`` / ``HVD_PS_TOTAL_GROUPS``, the total defaulting to
    the tier's ``DMLC_NUM_WORKER``). The leaders then check on the tier that every global id
    is taken once and that all jobs count the same total (a TopologyError on every rank of
    every job if not), and the strategies use the total.

    Example::

        hvd_ps.init(group_size=2)      # 4 ranks -> groups [0, 1] and [2, 3]
        hvd_ps.init(group_offset=1)    # the second job of two on one --servers-only tier
    """
    global _rt
    exits.install()  # an hvd_ps error that ends the job: one line, once per job
    with _lock:
        if _rt is not None:
            raise HvdPsError("hvd_ps.init() was already called in this process")
        if config.server_role() is not None:
            raise HvdPsError(
                "this process was started with DMLC_ROLE=server/scheduler; start PS servers "
                "with 'python -m hvd_ps.server', not with the training script"
            )
        cfg = config.load()
        config.limit_horovod_stalls(
            cfg.settings.timeout
        )  # Horovod gives up on a stalled collective
        group_size, groups = rendezvous.grouping(cfg, group_size, groups)  # or hvdps-run's
        topo = topology.setup(group_size=group_size, groups=groups)
        calls.start(topo)  # a collective some rank never calls ends the job within seconds
        rendezvous.check(cfg, topo)  # the grouping hvdps-run was told, if any, must agree
        place = placement.resolve(cfg, topo.num_groups, group_offset, total_groups)
        topo.group_offset, topo.total = place.offset, place.total
        local, address = _start_tier(cfg, topo)
        _rt = Runtime(cfg, topo, address, local)
        atexit.register(_at_exit)
        if topo.is_leader:
            uri, port, servers = address[:3]
            _rt.client = Client(
                uri, port, servers, topo.total_groups, topo.global_group_id, cfg, place.shared
            )
            from .core import fusion  # the compiled op: only leaders need it here

            _rt.client.after_wait = fusion.check_engine_errors  # a failed fused op of a bucket
            _rt.client.connect()
        if cfg.wiring.roster is not None:
            _rt.rejoined = _rejoined(_rt)
        if place.shared and not _rt.rejoined:  # other jobs' groups meet here: ids taken once?
            placement.check_claims(_rt, place)  # (a rejoining job's ids the roster checked)


def _rejoined(rt: Runtime) -> bool:
    """Every rank: whether this job's leaders rejoined the tier (all of them, or none)."""
    hvd = frameworks.horovod()

    mine = rt.client.rejoined if rt.client is not None else None
    if hvd.size() == 1:
        return bool(mine)
    with deadline.deadline(
        "telling every rank whether the job rejoins the tier", rt.cfg.settings.timeout
    ):
        flags = {f for f in hvd.allgather_object(mine, name="hvd_ps.rejoined") if f is not None}
    if len(flags) > 1:
        err = TopologyError(
            "some of this job's groups rejoin the PS tier (their ids had died or left) and "
            "others join it for the first time: a job that rejoins must bring back the groups "
            "of one job that died (the same HVD_PS_GROUP_OFFSET and grouping)"
        )
        err.every_rank = True
        raise err
    return flags == {True}


def _start_tier(cfg: config.Config, topo: topology.Topology) -> Tuple[Any, ...]:
    """Rank 0 starts the embedded tier (unless one is configured) and tells every rank."""
    hvd = frameworks.horovod()

    if cfg.wiring.external_tier:
        assert cfg.wiring.ps_root_uri is not None and cfg.wiring.ps_root_port is not None
        _check_reachable(cfg.wiring.ps_root_uri, cfg.wiring.ps_root_port, cfg.settings.timeout)
        return None, (
            cfg.wiring.ps_root_uri,
            cfg.wiring.ps_root_port,
            cfg.wiring.ps_num_servers or 1,
        )
    local = None
    message: Any = None
    if topo.rank == 0 and cfg.wiring.launcher is not None:  # hvdps-run starts it for our groups
        try:
            message = rendezvous.ask(cfg, topo.num_groups, len(topo.hosts))
        except HvdPsError as err:
            message = f"rank 0 could not get the PS tier from hvdps-run: {err}"
    elif topo.rank == 0:
        try:
            local = spawn.start(
                cfg.settings.num_servers,
                topo.num_groups,
                host=cfg.wiring.node_host
                or ("127.0.0.1" if topo.one_host else addresses.host_address()),
                timeout=cfg.settings.timeout,
            )
            message = (local.host, local.port, local.num_servers)
            if not local.host.startswith("127."):
                sys.stderr.write(
                    f"hvd_ps: warning: the embedded PS tier listens on {local.host}, where "
                    "ps-lite admits anyone who reaches its ports; start jobs on several hosts "
                    "with hvdps-run, which keeps those ports behind TLS tunnels\n"
                )
                sys.stderr.flush()
        except HvdPsError as err:
            message = f"rank 0 could not start the embedded PS tier: {err}"
    with deadline.deadline(
        "waiting for rank 0 to start the embedded PS tier", cfg.settings.timeout
    ):
        message = hvd.broadcast_object(message, root_rank=0, name="hvd_ps.tier_address")
    if isinstance(message, str):
        raise TierError(message)
    if local is not None:
        tier = local
        deadline.on_fatal(lambda: tier.stop(grace=0))
        tier.watch(lambda what: deadline.fatal(f"{what} during the job; ending it"))
    return local, tuple(message)


def _check_reachable(uri: str, port: int, timeout: float) -> None:
    """Every rank: the configured scheduler accepts TCP connections, else a TierError at once
    on every rank (ps-lite itself would retry until HVD_PS_TIMEOUT)."""
    hvd = frameworks.horovod()

    reached = addresses.port_open(uri, port)
    with deadline.deadline("checking that every rank reaches the PS scheduler", timeout):
        everyone = hvd.allgather_object(reached, name="hvd_ps.tier_reachable")
    missing = [r for r, ok in enumerate(everyone) if not ok]
    if missing:
        err = TierError(
            f"no PS scheduler accepts connections at {uri}:{port} (DMLC_PS_ROOT_URI, "
            f"DMLC_PS_ROOT_PORT) from rank(s) {missing}: start the tier first ('hvdps-run "
            "--servers-only' prints the variables to set), fix the address, or unset "
            "DMLC_PS_ROOT_URI so that the job starts a tier of its own"
        )
        err.every_rank = True
        raise err


def runtime() -> Runtime:
    if _rt is None:
        raise HvdPsError("call hvd_ps.init() first")
    return _rt


def barrier(what: str, process_set: Any = None) -> None:
    """A Horovod barrier (an allreduce of one number) bounded by ``HVD_PS_TIMEOUT``."""
    hvd = frameworks.horovod()
    rt = runtime()
    ps = hvd.global_process_set if process_set is None else process_set
    if ps.size() == 1:
        return
    with deadline.deadline(f"barrier: {what}", rt.cfg.settings.timeout):
        frameworks.allreduce_zero(rt.next_name("barrier"), ps)


def shutdown() -> None:
    """Leave the PS tier, stop the embedded servers, and shut Horovod down. Idempotent."""
    global _rt
    hvd = frameworks.horovod()

    with _lock:
        rt = _rt
        if rt is None:
            return
        with calls.call("hvd_ps.shutdown"):
            rt.in_flight.complete_all("hvd_ps.shutdown (completing the exchange in flight)")
            if rt.client is not None:  # async groups still training must not wait for ours
                rt.client.finish()
            barrier("hvd_ps.shutdown on every rank")
        calls.stop()
        if rt.local is not None:
            # the servers exit when the leaders leave: from here that is no failure to report
            rt.local.stopping = True
        if rt.client is not None:
            rt.client.close()
        if rt.local is not None:
            rt.local.stop(grace=min(10.0, rt.cfg.settings.timeout))
        _rt = None
        hvd.shutdown()


def _at_exit() -> None:
    """The program ends without shutdown(): never leave servers behind, never hang.

    After an uncaught exception the other ranks may be anywhere, so the ps-lite client must not
    run its exit barrier: stop the embedded tier and leave at once with status 1. After a normal
    end (every rank got here) a regular, bounded shutdown runs.
    """
    rt = _rt
    if rt is None:
        return
    if exits.crashed():
        if rt.local is not None:
            rt.local.stop(grace=0)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    shutdown()


# -- topology queries ----------------------------------------------------------------------


def group() -> Any:
    """The Horovod ``ProcessSet`` of this rank's group."""
    return runtime().topo.group


def group_id() -> int:
    """This rank's group inside this job (``0 .. num_groups() - 1``)."""
    return runtime().topo.group_id


def num_groups() -> int:
    """The number of groups of this job (see :func:`total_groups` for all jobs of the tier)."""
    return runtime().topo.num_groups


def global_group_id() -> int:
    """This rank's group among the groups of every job sharing the PS tier
    (``group_offset + group_id()``; equal to :func:`group_id` for a job alone). Shard data by
    it (with :func:`total_groups`) so that jobs sharing a tier train on different data."""
    return runtime().topo.global_group_id


def total_groups() -> int:
    """The number of groups of every job sharing the PS tier: the ``G`` of the strategies
    (equal to :func:`num_groups` for a job alone)."""
    return runtime().topo.total_groups


def group_rank() -> int:
    """This rank's position inside its group (0 is the group's leader)."""
    return runtime().topo.group_rank


def group_size() -> int:
    """The number of ranks in this rank's group."""
    return runtime().topo.group_size


def is_leader() -> bool:
    """Whether this rank is its group's leader, the one that talks to the PS tier."""
    return runtime().topo.is_leader


def groups() -> List[List[int]]:
    """Every group, as lists of global ranks."""
    return [list(g) for g in runtime().topo.groups]
