"""Configuration: the one module of ``hvd_ps`` that reads or writes ``os.environ``.

Every knob has a default that works on one machine with no setup. ``load()`` reads the
environment once and validates it (a bad value is a :class:`~hvd_ps.errors.ConfigError`
naming the variable); the rest of the package receives a :class:`Config`, or passes a mapping
of its own to ``load``. The other reads and writes of the process's environment are functions
here too: the environments of the children (:func:`local_server_environment`,
:func:`remote_server_environment`, :func:`job_environment`), the ps-lite variables a worker
sets before MXNet's KVStore reads them (:func:`set_worker_environment`,
:func:`set_node_host`, :func:`set_node_port`), Horovod's stall limits
(:func:`limit_horovod_stalls`), the MPI rank (:func:`launch_rank`), the local rank and the
port it picks in a job with tunnels (:func:`local_rank`, :func:`tunnel_port`) and the PS role
(:func:`defuse_stock_server`, :func:`server_role`, :func:`restore_role`).

=========================  ===========  ==========================================================
variable                   default      meaning
=========================  ===========  ==========================================================
``HVD_PS_TIMEOUT``         ``300``      seconds any wait may take (tier start, connect, barrier,
                                        exchange, group broadcast) before the job fails
``HVD_PS_NUM_SERVERS``     ``1``        servers the embedded tier starts on global rank 0's host
``HVD_PS_FUSION_THREADS``  ``0``        threads of the fused-buffer op (0: up to 4, by CPU count)
``HVD_PS_WIRE_DTYPE``      ``float32``  the PS wire: ``float32``, ``float16`` (half the bytes),
                                        ``int8`` or ``int4`` (blockwise scaled codes with error
                                        feedback, about 0.26x and 0.13x the bytes of float32);
                                        the servers keep float32 state whatever the wire
``HVD_PS_WIRE_BLOCK``      ``128``      elements per scale of the ``int8``/``int4`` wire (a
                                        multiple of 8)
``HVD_PS_WIRE_FEEDBACK``   ``1``        ``0``: the leaders keep no residual on a compressed wire
                                        (what a push's quantization drops is lost): only to
                                        measure what error feedback buys
``HVD_PS_BUCKET_MB``       ``4``        largest fused buffer (one PS key); a model's parameters
                                        become several keys whose transfers overlap
                                        (0: one key per dtype)
``HVD_PS_LOG_LEVEL``       ``WARNING``  log level of the ``hvd_ps`` logger
``HVD_PS_GROUP_SIZE``      unset        ranks per group when the script's ``hvd_ps.init()`` names no
                                        grouping (set by ``hvdps-run --group-size``)
``HVD_PS_NUM_GROUPS``      unset        groups the tier was started for (set by ``hvdps-run``);
                                        ``hvd_ps.init`` fails if the script makes another number
``HVD_PS_GROUP_OFFSET``    unset        global id of this job's first group when several jobs share
                                        one tier (``hvdps-run --servers-only``): the job's groups
                                        are ``OFFSET .. OFFSET + groups - 1`` of the total
``HVD_PS_TOTAL_GROUPS``    unset        groups of all jobs sharing the tier (printed by
                                        ``hvdps-run --servers-only``); default: the tier's
                                        ``DMLC_NUM_WORKER``, else this job's number of groups
``HVD_PS_LAUNCHER``        unset        ``host:port`` where ``hvdps-run`` waits to hear the job's
                                        number of groups before it starts the tier (set by it)
``HVD_PS_SECRET_FILE``     unset        the tier's secret (a file only its owner may read, at
                                        the same path on every host of the job): rank 0 and the
                                        leaders prove they hold it to ``hvdps-run`` and to the
                                        roster (set by ``hvdps-run``; printed by
                                        ``hvdps-run --servers-only``)
``HVD_PS_ROSTER``          unset        ``host:port`` of the roster of a shared tier (printed by
                                        ``hvdps-run --servers-only``): leaders hold a lease there,
                                        so the tier sees a group die and a restarted job rejoin
``HVD_PS_HEARTBEAT``       ``6``        ``hvdps-run --servers-only``: seconds without a ps-lite
                                        heartbeat after which the scheduler counts a node dead and
                                        gives its place to a node that rejoins
``HVD_PS_ANNOUNCED``       unset        ``server,worker`` (or ``server``): hvd_ps's scheduler
                                        registers a node of these roles only once the process
                                        that started it announced the node (a leader through
                                        its roster lease, hvdps-run for its servers); set by
                                        ``hvdps-run --servers-only``
``HVD_PS_TUNNELS``         unset        ``ADDR:FIRST-LAST,...``: the job's ps-lite nodes bind
                                        127.0.0.1 and reach other hosts through the tier's TLS
                                        tunnels; a leader on the host with address ``ADDR``
                                        binds port ``FIRST`` + its local rank (set by
                                        ``hvdps-run`` for a job on several hosts)
``HVD_PS_OWN_SCHEDULER``   unset        ``1``: a scheduler started with ``DMLC_ROLE=scheduler`` is
                                        hvd_ps's (:mod:`hvd_ps.ps.scheduler`), not ps-lite's; set
                                        by ``hvdps-run --servers-only``
``HVD_PS_AUDIT_DIR``       unset        servers append every update they apply (key, what
                                        arrived, the value before and after) to a JSON-lines file
                                        there: for tests and soaks of small models only
``DMLC_PS_ROOT_URI``       unset        scheduler address of an existing tier (set by
                                        ``hvdps-run``); unset means: start an embedded tier
``DMLC_PS_ROOT_PORT``      unset        scheduler port of that tier
``DMLC_NUM_SERVER``        unset        number of servers of that tier
``DMLC_NUM_WORKER``        unset        PS clients of that tier in all (several jobs may share
                                        one tier); default: this job's number of groups
``DMLC_NODE_HOST``         unset        address this process's ps-lite node binds and
                                        advertises; unset: 127.0.0.1 when the whole job runs
                                        on one host, else the address on the route to the
                                        scheduler (ps-lite alone would pick any interface)
=========================  ===========  ==========================================================

MXNet's own ``MXNET_KVSTORE_BIGARRAY_BOUND`` (default 1000000) is read here too: a key of fewer
elements lives whole on one server, and a compressed bucket is cut into shards below it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import ConfigError

WIRE_DTYPES = ("float32", "float16", "int8", "int4")


@dataclass(frozen=True)
class Settings:
    """What a user sets: the knobs of the table above that change how a job runs."""

    timeout: float = 300.0
    num_servers: int = 1
    fusion_threads: int = 0
    wire_dtype: str = "float32"
    wire_block: int = 128
    wire_feedback: bool = True
    kvstore_bound: int = 1000000
    bucket_mb: float = 4.0
    log_level: str = "WARNING"
    heartbeat: int = 6
    audit_dir: Optional[str] = None


@dataclass(frozen=True)
class Wiring:
    """What launchers set (``hvdps-run``, MXNet's launch tools): where the tier is, the job's
    place on it, and the secrets and addresses of the rendezvous. A user sets these only to
    join a tier by hand."""

    ps_root_uri: Optional[str] = None
    ps_root_port: Optional[int] = None
    ps_num_servers: Optional[int] = None
    ps_num_workers: Optional[int] = None
    node_host: Optional[str] = None
    launch_group_size: Optional[int] = None
    launch_num_groups: Optional[int] = None
    group_offset: Optional[int] = None
    total_groups: Optional[int] = None
    launcher: Optional[Tuple[str, int]] = None
    secret_file: Optional[str] = None
    roster: Optional[Tuple[str, int]] = None
    own_scheduler: bool = False
    announced_roles: Tuple[str, ...] = ()
    #: ``HVD_PS_TUNNELS``: per job host, its address and its leaders' first and last port
    tunnels: Tuple[Tuple[str, int, int], ...] = ()

    @property
    def external_tier(self) -> bool:
        """True when a PS tier address was given, i.e. ranks join it instead of starting one."""
        return self.ps_root_uri is not None


@dataclass(frozen=True)
class Config:
    """Validated configuration of one process: the user's settings and the launcher's wiring.
    ``hvd_ps.init`` (or a process's ``main``) loads it once and passes it down."""

    settings: Settings = field(default_factory=Settings)
    wiring: Wiring = field(default_factory=Wiring)


def _number(env: Mapping[str, str], name: str, default: float, kind: type, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    what = "a number" if kind is float else "an int"
    fix = f"set {what} >= {minimum:g}, or unset it for the default {default:g}"
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}: {fix}") from None
    if not math.isfinite(value):  # nan fires every deadline at once; inf kills its timer
        raise ConfigError(f"{name}={raw!r} must be a finite number: {fix}")
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}: {fix}")
    return float(value)


def _address(env: Mapping[str, str], name: str) -> Optional[Tuple[str, int]]:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={raw!r} must be host:port (it is set by hvdps-run)")
    return host, int(port)


def _launcher(env: Mapping[str, str]) -> Optional[Tuple[str, int]]:
    address = _address(env, "HVD_PS_LAUNCHER")
    if address is None:
        return None
    if not env.get("HVD_PS_SECRET_FILE"):
        raise ConfigError(
            "HVD_PS_LAUNCHER is set but HVD_PS_SECRET_FILE is not: both are set by hvdps-run"
        )
    return address


def _roster(env: Mapping[str, str]) -> Optional[Tuple[str, int]]:
    address = _address(env, "HVD_PS_ROSTER")
    if address is not None and not env.get("HVD_PS_SECRET_FILE"):
        raise ConfigError(
            "HVD_PS_ROSTER is set but HVD_PS_SECRET_FILE is not: export every line "
            "'hvdps-run --servers-only' printed, HVD_PS_SECRET_FILE included"
        )
    return address


def _roles(env: Mapping[str, str], name: str) -> Tuple[str, ...]:
    raw = (env.get(name) or "").strip()
    roles = tuple(r for r in raw.split(",") if r)
    if any(r not in ("server", "worker") for r in roles):
        raise ConfigError(f"{name}={raw!r} must list server and/or worker (it is set by hvdps-run)")
    return roles


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip()
    if raw not in ("", "0", "1"):
        raise ConfigError(f"{name}={raw!r} must be 1 or 0 (or unset)")
    return raw == "1"


def _off(env: Mapping[str, str], name: str) -> bool:
    """A switch that is on unless set to 0."""
    raw = (env.get(name) or "").strip()
    if raw not in ("", "0", "1"):
        raise ConfigError(f"{name}={raw!r} must be 1 or 0 (or unset)")
    return raw == "0"


def _tunnels(env: Mapping[str, str]) -> Tuple[Tuple[str, int, int], ...]:
    raw = env.get("HVD_PS_TUNNELS", "").strip()
    if not raw:
        return ()
    out = []
    for item in raw.split(","):
        addr, _, ports = item.strip().rpartition(":")
        first, _, last = ports.partition("-")
        if not addr or not first.isdigit() or not last.isdigit():
            raise ConfigError(
                f"HVD_PS_TUNNELS={raw!r}: {item!r} is not ADDR:FIRST-LAST (hvdps-run sets it)"
            )
        if not 0 < int(first) <= int(last) < 65536:
            raise ConfigError(f"HVD_PS_TUNNELS={raw!r}: {item!r} holds no TCP port range")
        out.append((addr, int(first), int(last)))
    return tuple(out)


def _wire_block(env: Mapping[str, str]) -> int:
    block = int(_number(env, "HVD_PS_WIRE_BLOCK", 128, int, 8))
    if block % 8 or block > 32768:
        raise ConfigError(f"HVD_PS_WIRE_BLOCK={block} must be a multiple of 8, at most 32768")
    return block


def _optional_int(env: Mapping[str, str], name: str, minimum: int = 1) -> Optional[int]:
    raw = env.get(name)
    return None if raw is None or not raw.strip() else int(_number(env, name, 1, int, minimum))


def load(environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate the environment (``os.environ`` unless ``environ`` is given)."""
    env = os.environ if environ is None else environ
    wire = env.get("HVD_PS_WIRE_DTYPE", "float32").strip() or "float32"
    if wire not in WIRE_DTYPES:
        raise ConfigError(f"HVD_PS_WIRE_DTYPE={wire!r} must be one of {', '.join(WIRE_DTYPES)}")
    uri = env.get("DMLC_PS_ROOT_URI") or None
    port: Optional[int] = None
    if uri is not None:
        if not env.get("DMLC_PS_ROOT_PORT"):
            raise ConfigError(
                "DMLC_PS_ROOT_URI is set but DMLC_PS_ROOT_PORT is not: set both (the address "
                "of a running tier, as 'hvdps-run --servers-only' prints it), or neither (the "
                "job then starts a tier of its own)"
            )
        port = int(_number(env, "DMLC_PS_ROOT_PORT", 0, int, 1))
        if port > 65535:
            raise ConfigError(f"DMLC_PS_ROOT_PORT={port} is not a TCP port: set one of 1..65535")
    ps_servers = env.get("DMLC_NUM_SERVER")
    ps_workers = env.get("DMLC_NUM_WORKER")
    level = env.get("HVD_PS_LOG_LEVEL", "WARNING").strip().upper() or "WARNING"
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"HVD_PS_LOG_LEVEL={level!r} is not a logging level (e.g. INFO)")
    settings = Settings(
        timeout=float(_number(env, "HVD_PS_TIMEOUT", 300.0, float, 0.1)),
        num_servers=int(_number(env, "HVD_PS_NUM_SERVERS", 1, int, 1)),
        fusion_threads=int(_number(env, "HVD_PS_FUSION_THREADS", 0, int, 0)),
        wire_dtype=wire,
        wire_block=_wire_block(env),
        wire_feedback=not _off(env, "HVD_PS_WIRE_FEEDBACK"),
        kvstore_bound=int(_number(env, "MXNET_KVSTORE_BIGARRAY_BOUND", 1000000, int, 1)),
        bucket_mb=float(_number(env, "HVD_PS_BUCKET_MB", 4.0, float, 0.0)),
        log_level=level,
        heartbeat=int(_number(env, "HVD_PS_HEARTBEAT", 6, int, 2)),
        audit_dir=env.get("HVD_PS_AUDIT_DIR") or None,
    )
    wiring = Wiring(
        ps_root_uri=uri,
        ps_root_port=port,
        ps_num_servers=int(_number(env, "DMLC_NUM_SERVER", 1, int, 1)) if ps_servers else None,
        ps_num_workers=int(_number(env, "DMLC_NUM_WORKER", 1, int, 1))
        if uri is not None and ps_workers
        else None,
        node_host=env.get("DMLC_NODE_HOST") or None,
        launch_group_size=_optional_int(env, "HVD_PS_GROUP_SIZE"),
        launch_num_groups=_optional_int(env, "HVD_PS_NUM_GROUPS"),
        group_offset=_optional_int(env, "HVD_PS_GROUP_OFFSET", minimum=0),
        total_groups=_optional_int(env, "HVD_PS_TOTAL_GROUPS"),
        launcher=_launcher(env),
        secret_file=env.get("HVD_PS_SECRET_FILE") or None,
        roster=_roster(env),
        own_scheduler=_flag(env, "HVD_PS_OWN_SCHEDULER"),
        announced_roles=_roles(env, "HVD_PS_ANNOUNCED"),
        tunnels=_tunnels(env),
    )
    return Config(settings, wiring)


def ps_environment(
    role: str, root_uri: str, root_port: int, num_servers: int, num_workers: int, node_host: str
) -> Dict[str, Any]:
    """The ``DMLC_*`` variables a ps-lite node of ``role`` needs (MXNet's standard launch set)."""
    if role not in ("scheduler", "server", "worker"):
        raise ConfigError(f"role={role!r} must be scheduler, server or worker")
    return {
        "DMLC_ROLE": role,
        "DMLC_PS_ROOT_URI": root_uri,
        "DMLC_PS_ROOT_PORT": str(root_port),
        "DMLC_NUM_SERVER": str(num_servers),
        "DMLC_NUM_WORKER": str(num_workers),
        "DMLC_NODE_HOST": node_host,
    }


#: seconds between two ps-lite heartbeats of a node (ps-lite counts whole seconds)
HEARTBEAT_INTERVAL = 1


def heartbeat_environment(dead_after: int) -> Dict[str, str]:
    """ps-lite's heartbeats, for the nodes of a tier that groups may leave and rejoin: every
    node but the scheduler sends one each :data:`HEARTBEAT_INTERVAL` s, and the scheduler
    counts a node silent for ``dead_after`` s as dead (its place goes to a node that joins
    later). Harmless to the role that does not use one of the two."""
    return {
        "PS_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        "PS_HEARTBEAT_TIMEOUT": str(dead_after),
    }


def set_worker_environment(
    root_uri: str,
    root_port: int,
    num_servers: int,
    num_workers: int,
    node_host: str,
    heartbeats: bool = False,
) -> None:
    """Put a ps-lite worker's ``DMLC_*`` variables (:func:`ps_environment`) in this process's
    environment, where MXNet reads them when it creates the dist KVStore; with
    ``heartbeats``, also ps-lite's heartbeat interval (a tier with a roster needs them)."""
    os.environ.update(
        ps_environment("worker", root_uri, root_port, num_servers, num_workers, node_host)
    )
    if heartbeats:
        os.environ["PS_HEARTBEAT_INTERVAL"] = str(HEARTBEAT_INTERVAL)


def node_port(port: int) -> Dict[str, str]:
    """ps-lite's ``PORT``: the port a server or worker node binds and advertises (ps-lite
    picks another if it is taken)."""
    return {"PORT": str(port)}


def set_node_port(port: int) -> None:
    """Set ps-lite's ``PORT`` (:func:`node_port`) in this process's environment."""
    os.environ.update(node_port(port))


def local_rank() -> Optional[int]:
    """This process's rank on its host as the MPI or Horovod launcher tells it (None when not
    under one); known before ``hvd.init``."""
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "HOROVOD_LOCAL_RANK"):
        raw = os.environ.get(name, "")
        if raw.isdigit():
            return int(raw)
    return None


def tunnel_port(tunnels: Tuple[Tuple[str, int, int], ...], is_mine: Callable[[str], bool]) -> int:
    """The port this rank's ps-lite node binds in a job with tunnels (``HVD_PS_TUNNELS``): the
    first leader port of the host whose address ``is_mine``, plus the local rank."""
    rank = local_rank()
    if rank is None:
        raise ConfigError(
            "HVD_PS_TUNNELS is set but the launcher gave no local rank "
            "(OMPI_COMM_WORLD_LOCAL_RANK or HOROVOD_LOCAL_RANK): run the job with hvdps-run"
        )
    for addr, first, last in tunnels:
        if is_mine(addr):
            if first + rank > last:
                raise ConfigError(
                    f"HVD_PS_TUNNELS: local rank {rank} on {addr} is beyond the host's "
                    f"{last - first + 1} slots: give -H/--hostfile this host's slots"
                )
            return first + rank
    hosts = ", ".join(a for a, _, _ in tunnels)
    raise ConfigError(
        f"HVD_PS_TUNNELS names no address of this host (it names {hosts}): list every host "
        "of the job in -H/--hostfile"
    )


def set_node_host(address: str) -> None:
    """Set ``DMLC_NODE_HOST`` of this process (and of the program it then executes)."""
    os.environ["DMLC_NODE_HOST"] = address


def limit_horovod_stalls(timeout: float) -> None:
    """Make Horovod give up on a stalled collective: ``HOROVOD_STALL_CHECK_TIME_SECONDS`` =
    ``timeout / 4`` (at least 1) and ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`` = ``timeout`` (at
    least 2), whole seconds, each only where it is not set already."""
    os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(max(1, int(timeout / 4))))
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(max(2, int(timeout))))


#: MPI's and Horovod's variables: a PS server must not look like a rank of the job
_MPI_PREFIXES = ("OMPI_", "PMIX_", "PMI_", "HOROVOD_")


def local_server_environment(ps: Mapping[str, str]) -> Dict[str, str]:
    """The environment of a PS process started on this host: this process's with ``ps`` (its
    ``DMLC_*`` variables) on top, less MPI's and Horovod's variables and
    ``HVD_PS_SERVER_ROLE``, and ``OMP_NUM_THREADS=1`` unless it is set."""
    env = {**os.environ, **ps}
    env = {k: v for k, v in env.items() if not k.startswith(_MPI_PREFIXES)}
    env.pop("HVD_PS_SERVER_ROLE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def remote_server_environment(ps: Mapping[str, str]) -> Dict[str, str]:
    """The variables set for a PS server started on another host: ``ps``, this process's
    ``PYTHONPATH`` and ``HVD_PS_LOG_LEVEL`` where set, and ``OMP_NUM_THREADS=1`` unless ``ps``
    sets it."""
    env = dict(ps)
    env.update({k: os.environ[k] for k in ("PYTHONPATH", "HVD_PS_LOG_LEVEL") if k in os.environ})
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


#: variables of an outer launch that must not leak into a job ``hvdps-run`` starts (others,
#: e.g. ``DMLC_INTERFACE``, are the user's and pass through); prefixes, so that
#: ``HVD_PS_LAUNCHER`` also drops any ``HVD_PS_LAUNCHER_...``
_OUTER_LAUNCH = (
    "DMLC_ROLE",
    "DMLC_PS_ROOT_URI",
    "DMLC_PS_ROOT_PORT",
    "DMLC_NUM_SERVER",
    "DMLC_NUM_WORKER",
    "HVD_PS_LAUNCHER",
    "HVD_PS_GROUP_SIZE",
    "HVD_PS_NUM_GROUPS",
    "HVD_PS_GROUP_OFFSET",  # a tier hvdps-run starts for a job serves that job alone
    "HVD_PS_TOTAL_GROUPS",
    "HVD_PS_ROSTER",
    "HVD_PS_SECRET_FILE",  # hvdps-run hands its own tier's secret to the job
    "HVD_PS_TUNNELS",
)


def job_environment() -> Dict[str, str]:
    """This process's environment for the job ``hvdps-run`` starts, without the tier and
    grouping variables an outer launch may have left (``hvdps-run`` sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_OUTER_LAUNCH)}


def launch_rank() -> int:
    """This process's global rank as the MPI launcher tells it (0 when not under one); known
    before ``hvd.init``."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "HOROVOD_RANK"):
        raw = os.environ.get(name, "")
        if raw.isdigit():
            return int(raw)
    return 0


def debug_errors() -> bool:
    """Whether ``HVD_PS_LOG_LEVEL=DEBUG`` asks for full tracebacks of hvd_ps's errors."""
    return os.environ.get("HVD_PS_LOG_LEVEL", "").strip().upper() == "DEBUG"


SERVER_ROLES = ("scheduler", "server")


def defuse_stock_server() -> None:
    """Keep ``import mxnet`` from running MXNet's stock (pickle-loading) server.

    MXNet starts its own server at import time when ``DMLC_ROLE`` is ``server`` or
    ``scheduler``. Before mxnet is imported, such a role is moved to ``HVD_PS_SERVER_ROLE`` and
    ``DMLC_ROLE`` becomes ``worker``; ``python -m hvd_ps.server`` puts it back when it starts
    ps-lite with its own safe controller.
    """
    role = os.environ.get("DMLC_ROLE")
    if role in SERVER_ROLES:
        os.environ["HVD_PS_SERVER_ROLE"] = role
        os.environ["DMLC_ROLE"] = "worker"


def server_role() -> Optional[str]:
    """The PS role this process was started with, or None for a training process."""
    role = os.environ.get("HVD_PS_SERVER_ROLE") or os.environ.get("DMLC_ROLE")
    return role if role in SERVER_ROLES else None


def restore_role(role: str) -> None:
    """Hand the role back to ps-lite (which reads ``DMLC_ROLE`` when the KVStore is created)."""
    os.environ["DMLC_ROLE"] = role
