"""``hvdps-run``'s command line: its flags, what it forwards to ``horovodrun``, and the plan
of which PS process runs where. No process is started here (see :mod:`hvd_ps.launch.cli`)."""

from __future__ import annotations

import argparse
import difflib
import socket
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .. import __version__, addresses, config, private_api

PROG = "hvdps-run"
#: horovodrun 0.28 flags that take a value (the rest are switches): forwarded with it.
HOROVODRUN_VALUE_FLAGS = {
    "--start-timeout", "--network-interfaces", "--network-interface", "--output-filename",
    "--config-file", "--fusion-threshold-mb", "--cycle-time-ms", "--cache-capacity",
    "--autotune-log-file", "--autotune-warmup-samples", "--autotune-steps-per-sample",
    "--autotune-bayes-opt-max-samples", "--autotune-gaussian-process-noise", "--min-np",
    "--min-num-proc", "--max-np", "--max-num-proc", "--slots-per-host", "--elastic-timeout",
    "--reset-limit", "--timeline-filename", "--stall-check-warning-time-seconds",
    "--stall-check-shutdown-time-seconds", "--mpi-args", "--binding-args", "--num-nccl-streams",
    "--thread-affinity", "--gloo-timeout-seconds", "--log-level", "--host-discovery-script",
}  # fmt: skip
HOROVODRUN_TWO_VALUE_FLAGS = {"--blacklist-cooldown-range"}
#: our flags that horovodrun needs too: parsed here and forwarded unchanged
SHARED_FLAGS = {"-np", "--num-proc", "-H", "--hosts", "-hostfile", "--hostfile", "-p",
                "--ssh-port", "-i", "--ssh-identity-file", "--verbose"}  # fmt: skip


class UsageError(Exception):
    """A bad command line; ``main`` reports it and exits 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} -np N [options] [horovodrun options] COMMAND ...\n"
        f"       {PROG} --servers-only --num-workers G [options]",
        description="Start hvd_ps's parameter-server tier, run horovodrun against it, stop "
        "the tier when the job ends, exit with the job's code. Flags not listed here go to "
        "horovodrun unchanged (write them as --flag=value if hvdps-run does not know them).",
    )
    p.add_argument("--version", action="version", version=f"{PROG} (hvd_ps) {__version__}")
    p.add_argument("-np", "--num-proc", type=int, dest="num_proc", help="training processes")
    p.add_argument("-H", "--hosts", help="host:slots,... (as horovodrun)")
    p.add_argument("-hostfile", "--hostfile", help="hostfile (as horovodrun)")
    p.add_argument("-p", "--ssh-port", type=int, help="ssh port (horovodrun and remote PS)")
    p.add_argument("-i", "--ssh-identity-file", help="ssh key (horovodrun and remote PS)")
    p.add_argument("--verbose", action="store_true", help="print the PS processes and commands")
    p.add_argument(
        "--num-servers", type=int, default=None, help="PS servers (default: HVD_PS_NUM_SERVERS, 1)"
    )
    p.add_argument(
        "--group-size",
        type=int,
        help="ranks per group, for a script whose hvd_ps.init() names no grouping (it reads "
        "HVD_PS_GROUP_SIZE); default: the script's grouping, which rank 0 reports to hvdps-run "
        "before the tier starts",
    )
    p.add_argument(
        "--num-groups",
        "--num-workers",
        type=int,
        dest="num_workers",
        help="PS workers = groups of the job, checked against the script's grouping (default: "
        "what the script or --group-size makes); with --servers-only: the total over all "
        "jobs that will join",
    )
    p.add_argument(
        "--server-hosts",
        help="host,host,...: where the servers run, round robin (default: the -H/--hostfile "
        "hosts in order; this host without them); hosts outside the job are fine",
    )
    p.add_argument("--ps-host", help="address the scheduler binds (required with remote hosts)")
    p.add_argument("--ps-port", type=int, help="scheduler port (default: a free one)")
    p.add_argument(
        "--timeout", type=float, help="seconds for the tier to start; also the job's HVD_PS_TIMEOUT"
    )
    p.add_argument(
        "--servers-only",
        action="store_true",
        help="start only the PS tier, for --num-workers groups of one or more jobs; it prints "
        "the exports for the jobs, and each job sets HVD_PS_GROUP_OFFSET (the global id of "
        "its first group)",
    )
    p.add_argument(
        "--allow-stock-workers",
        action="store_true",
        help="--servers-only: let stock MXNet workers (no roster lease, no secret) register; "
        "by default the scheduler registers only the workers of leaders that proved they hold "
        "the tier's secret",
    )
    p.add_argument(
        "--secret-file",
        help="the tier's secret (a file of 16 to 4096 bytes that only its owner may read: mode "
        "600); default: a new random one, removed at the end. Give one to a --servers-only "
        "tier that jobs on other hosts join: they need the same file",
    )
    p.add_argument(
        "--ssh-cmd",
        default="ssh -o BatchMode=yes",
        help="remote shell for servers on remote hosts (default: %(default)s)",
    )
    p.add_argument("--horovodrun", default="horovodrun", help="horovodrun executable")
    p.add_argument(
        "--no-tunnels",
        action="store_true",
        help="with remote hosts: let ps-lite's nodes listen on the network instead of behind "
        "the tier's TLS tunnels (anyone who reaches their ports can then read and change the "
        "model: only on a network you trust, or to measure what the tunnels cost)",
    )
    p.add_argument("--pidfile", help="write the PIDs of the PS processes here, one a line")
    return p


def _arity(parser: argparse.ArgumentParser) -> Dict[str, int]:
    """How many values each of our flags takes."""
    out = {}
    for action in private_api.parser_actions(parser):
        n = 0 if action.nargs == 0 else 1
        out.update({flag: n for flag in action.option_strings})
    return out


def split_argv(argv: Sequence[str], ours: Dict[str, int]) -> Tuple[List[str], List[str], List[str]]:
    """Split into (our flags, flags for horovodrun, the command)."""
    mine: List[str] = []
    forward: List[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return mine, forward, list(argv[i + 1 :])
        if not tok.startswith("-") or tok == "-":
            return mine, forward, list(argv[i:])
        name = tok.split("=", 1)[0]
        if name in ours:
            n = 0 if "=" in tok else ours[name]
            mine += argv[i : i + 1 + n]
            if name in SHARED_FLAGS:
                forward += argv[i : i + 1 + n]
        else:
            close = difflib.get_close_matches(name, [f for f in ours if f[1] == "-"], 1, 0.9)
            if close and name.startswith("--"):  # a typo of ours would break the command line
                raise UsageError(f"unknown flag {name} (did you mean {close[0]}?)")
            n = 0 if "=" in tok else 1 if name in HOROVODRUN_VALUE_FLAGS else 0
            n = 2 if name in HOROVODRUN_TWO_VALUE_FLAGS else n
            forward += argv[i : i + 1 + n]
        i += 1 + n
    return mine, forward, []


# -- hosts -----------------------------------------------------------------------------------


def parse_hosts(hosts: Optional[str], hostfile: Optional[str]) -> List[str]:
    """Host names of ``-H a:2,b:2`` or of a hostfile (``a slots=2`` or ``a:2`` lines)."""
    return list(parse_slots(hosts, hostfile))


def parse_slots(hosts: Optional[str], hostfile: Optional[str]) -> Dict[str, int]:
    """Slots by host name, in order, of ``-H a:2,b:2`` or of a hostfile (``a slots=2`` or
    ``a:2`` lines); a host named without slots has 1, as horovodrun counts it."""
    entries: List[Tuple[str, str]] = []
    if hosts:
        for item in hosts.split(","):
            name, _, slots = item.strip().partition(":")
            if not name:
                raise UsageError(f"-H/--server-hosts: bad entry {item!r} (expected host:slots)")
            entries.append((name, slots))
    elif hostfile:
        try:
            with open(hostfile) as f:
                lines = [ln.split("#")[0].strip() for ln in f]
        except OSError as err:
            raise UsageError(f"--hostfile: cannot read {hostfile}: {err.strerror}") from None
        for ln in filter(None, lines):
            first, *rest = ln.split()
            name, _, slots = first.partition(":")
            for word in rest:
                slots = word.split("=", 1)[1] if word.startswith("slots=") else slots
            entries.append((name, slots))
    out: Dict[str, int] = {}
    for name, slots in entries:
        if slots and not slots.isdigit():
            raise UsageError(f"-H/--hostfile: {name}: slots {slots!r} is not a number")
        out[name] = out.get(name, 0) + (int(slots) if slots else 1)
    return out


def is_local(host: str) -> bool:
    """True when ``host`` names this machine (an address we can bind)."""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        return addresses.can_bind(socket.gethostbyname(host))
    except OSError:
        return False


# -- the plan --------------------------------------------------------------------------------


@dataclass
class Plan:
    """What to start where: ``servers`` holds one host per server (None: this host).

    ``num_workers`` is None when only the job's script knows its grouping: the tier then
    starts when rank 0 reports the number of groups (see :mod:`hvd_ps.launch.rendezvous`).
    """

    ps_host: str
    port: Optional[int]
    num_workers: Optional[int]
    servers: List[Optional[str]]
    timeout: float
    remote: bool = False
    group_size: Optional[int] = None
    #: the job's hosts (``-H``/``--hostfile``) and their slots; empty: this host only
    hosts: Dict[str, int] = field(default_factory=dict)
    #: whether ps-lite's nodes talk through the tier's tunnels (a job with remote hosts,
    #: unless ``--no-tunnels``: :mod:`hvd_ps.launch.tunnels`)
    tunnels: bool = False

    @property
    def local_servers(self) -> int:
        return sum(1 for h in self.servers if h is None)


def make_plan(opts: argparse.Namespace, cfg: config.Config) -> Plan:
    """Check the flags against each other and decide where each PS process runs."""
    if opts.hosts and opts.hostfile:
        raise UsageError("-H/--hosts and --hostfile are exclusive")
    slots = parse_slots(opts.hosts, opts.hostfile)
    hosts = list(slots)
    server_hosts = parse_hosts(opts.server_hosts, None) if opts.server_hosts else hosts
    remote = [h for h in dict.fromkeys(hosts + server_hosts) if not is_local(h)]
    if remote and not opts.ps_host:
        raise UsageError(f"--ps-host is required with remote hosts ({', '.join(remote)})")
    num_servers = cfg.settings.num_servers if opts.num_servers is None else opts.num_servers
    if num_servers < 1:
        raise UsageError(f"--num-servers must be >= 1, got {num_servers}")
    workers = opts.num_workers
    if workers is not None and workers < 1:
        raise UsageError(f"--num-groups/--num-workers must be >= 1, got {workers}")
    if opts.servers_only and opts.num_workers is None:
        raise UsageError("--servers-only needs --num-workers (total PS workers of all jobs)")
    if opts.allow_stock_workers and not opts.servers_only:
        raise UsageError(
            "--allow-stock-workers is for a --servers-only tier (a job's tier takes its own "
            "ranks only)"
        )
    if opts.no_tunnels and opts.servers_only:
        raise UsageError(
            "--no-tunnels is for a job on several hosts (a --servers-only tier has no tunnels "
            "yet: its ps-lite ports listen on --ps-host)"
        )
    if opts.servers_only and opts.group_size is not None:
        raise UsageError("--group-size is for a job; with --servers-only give --num-workers")
    if not opts.servers_only and opts.num_proc is None:
        raise UsageError("-np/--num-proc is required (or --servers-only)")
    if opts.group_size is not None and not opts.servers_only:
        if opts.group_size < 1 or opts.num_proc % opts.group_size:
            raise UsageError(
                f"--group-size {opts.group_size} must be >= 1 and divide -np {opts.num_proc}"
            )
        if workers is not None and workers != opts.num_proc // opts.group_size:
            raise UsageError(
                f"--num-groups {workers} contradicts --group-size {opts.group_size} with "
                f"-np {opts.num_proc} ({opts.num_proc // opts.group_size} groups): give one"
            )
        workers = opts.num_proc // opts.group_size
    if opts.ps_port is not None and not 0 < opts.ps_port < 65536:
        raise UsageError(f"--ps-port {opts.ps_port} is not a TCP port")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {opts.timeout}")
    placed: List[Optional[str]] = list(server_hosts) or [None]
    servers = [placed[i % len(placed)] for i in range(num_servers)]
    return Plan(
        ps_host=opts.ps_host or "127.0.0.1",
        port=opts.ps_port,
        num_workers=workers,
        servers=[h if h in remote else None for h in servers],
        timeout=opts.timeout if opts.timeout is not None else min(cfg.settings.timeout, 120.0),
        remote=bool(remote),
        group_size=opts.group_size,
        hosts=slots,
        tunnels=bool(remote) and not opts.servers_only and not opts.no_tunnels,
    )
