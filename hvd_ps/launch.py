"""``hvdps-run``: start the PS tier, run ``horovodrun`` against it, stop everything after.

Usage::

    hvdps-run -np 4 [-H a:2,b:2 | --hostfile F] [--num-servers 2] [--num-groups G]
              [--ps-host ADDR] [--ps-port P] [--timeout S] [horovodrun flags] python train.py ...
    hvdps-run --servers-only --num-servers 2 --num-workers G [--ps-port P] [--ps-host ADDR]

Job mode starts a ps-lite scheduler on this host and ``--num-servers`` servers (spread over
the ``-H`` hosts, this host for local ones, over ``--ssh-cmd`` for the others), then runs
``horovodrun`` with every flag it does not know itself and with ``DMLC_PS_ROOT_URI``,
``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER`` (and ``DMLC_NODE_HOST``) in the environment, which
horovodrun hands to every rank. ``--num-groups`` is the number of PS workers, i.e. of groups
the script's ``hvd_ps.init`` makes; it defaults to one per host (``hvd_ps.init()``'s own
default) and must match the script's grouping. A PS process that fails ends the job with a
message naming it; ``hvdps-run`` exits with the job's exit code and never leaves a PS
process behind. With only local hosts everything binds 127.0.0.1; with remote hosts the
scheduler binds ``--ps-host``, which is then required.

``--servers-only`` starts just the tier, prints the ``export`` lines for it and serves until
SIGINT/SIGTERM or until its servers finish (when all ``--num-workers`` PS workers, possibly
from several independent ``horovodrun`` jobs, have left).

Exit codes: the job's own; 2 for bad flags; 1 when the tier cannot start; 75 when a PS
process dies during the job; 127 when ``horovodrun`` is missing; 128+N after signal N.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from . import __version__, config, spawn
from .deadline import EXIT_CODE as TIER_DIED
from .errors import HvdPsError

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
        "--num-groups",
        "--num-workers",
        type=int,
        dest="num_workers",
        help="PS workers = groups of the job; must match the script's "
        "hvd_ps.init grouping (default: one per host, 1 without -H); with "
        "--servers-only: the total over all jobs that will join",
    )
    p.add_argument("--ps-host", help="address the scheduler binds (required with remote hosts)")
    p.add_argument("--ps-port", type=int, help="scheduler port (default: a free one)")
    p.add_argument(
        "--timeout", type=float, help="seconds for the tier to start; also the job's HVD_PS_TIMEOUT"
    )
    p.add_argument("--servers-only", action="store_true", help="start only the PS tier")
    p.add_argument(
        "--ssh-cmd",
        default="ssh -o BatchMode=yes",
        help="remote shell for servers on remote hosts (default: %(default)s)",
    )
    p.add_argument("--horovodrun", default="horovodrun", help="horovodrun executable")
    p.add_argument("--pidfile", help="write the PIDs of the PS processes here, one a line")
    return p


def _arity(parser: argparse.ArgumentParser) -> Dict[str, int]:
    """How many values each of our flags takes."""
    out = {}
    for action in parser._actions:
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
    names: List[str] = []
    if hosts:
        for item in hosts.split(","):
            name = item.strip().split(":")[0]
            if not name:
                raise UsageError(f"-H/--hosts: bad entry {item!r} (expected host:slots)")
            names.append(name)
    elif hostfile:
        try:
            with open(hostfile) as f:
                lines = [ln.split("#")[0].strip() for ln in f]
        except OSError as err:
            raise UsageError(f"--hostfile: cannot read {hostfile}: {err.strerror}") from None
        names = [ln.split()[0].split(":")[0] for ln in lines if ln]
    return list(dict.fromkeys(names))  # distinct, in order


def is_local(host: str) -> bool:
    """True when ``host`` names this machine (an address we can bind)."""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        addr = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False


# -- the plan --------------------------------------------------------------------------------


@dataclass
class Plan:
    """What to start where: ``servers`` holds one host per server (None: this host)."""

    ps_host: str
    port: Optional[int]
    num_workers: int
    servers: List[Optional[str]]
    timeout: float
    remote: bool = False

    @property
    def local_servers(self) -> int:
        return sum(1 for h in self.servers if h is None)


def make_plan(opts: argparse.Namespace, cfg: config.Config) -> Plan:
    """Check the flags against each other and decide where each PS process runs."""
    if opts.hosts and opts.hostfile:
        raise UsageError("-H/--hosts and --hostfile are exclusive")
    hosts = parse_hosts(opts.hosts, opts.hostfile)
    remote = [h for h in hosts if not is_local(h)]
    if remote and not opts.ps_host:
        raise UsageError(f"--ps-host is required with remote hosts ({', '.join(remote)})")
    num_servers = cfg.num_servers if opts.num_servers is None else opts.num_servers
    if num_servers < 1:
        raise UsageError(f"--num-servers must be >= 1, got {num_servers}")
    workers = opts.num_workers if opts.num_workers is not None else max(1, len(hosts))
    if workers < 1:
        raise UsageError(f"--num-groups/--num-workers must be >= 1, got {workers}")
    if opts.servers_only and opts.num_workers is None:
        raise UsageError("--servers-only needs --num-workers (total PS workers of all jobs)")
    if not opts.servers_only and opts.num_proc is None:
        raise UsageError("-np/--num-proc is required (or --servers-only)")
    if opts.ps_port is not None and not 0 < opts.ps_port < 65536:
        raise UsageError(f"--ps-port {opts.ps_port} is not a TCP port")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {opts.timeout}")
    placed: List[Optional[str]] = list(hosts) or [None]
    servers = [placed[i % len(placed)] for i in range(num_servers)]
    return Plan(
        ps_host=opts.ps_host or "127.0.0.1",
        port=opts.ps_port,
        num_workers=workers,
        servers=[h if h in remote else None for h in servers],
        timeout=opts.timeout if opts.timeout is not None else min(cfg.timeout, 120.0),
        remote=bool(remote),
    )


# -- the tier --------------------------------------------------------------------------------


def remote_server_command(
    ssh: Sequence[str], host: str, env: Dict[str, str], python: str, cwd: str
) -> List[str]:
    """The command that runs one PS server on ``host`` over the remote shell ``ssh``."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    script = (
        f"cd {shlex.quote(cwd)} 2>/dev/null; "
        f"exec env {assigns} {shlex.quote(python)} -m hvd_ps.server"
    )
    return [*ssh, host, script]


@dataclass
class Tier:
    """The scheduler and local servers (:class:`spawn.LocalTier`) plus remote servers."""

    local: spawn.LocalTier
    remote: Dict[str, subprocess.Popen] = field(default_factory=dict)

    def procs(self) -> Dict[str, subprocess.Popen]:
        return {**self.local.procs, **self.remote}

    def failed(self) -> Optional[str]:
        """A PS process that ended badly (clean exits are servers seeing all workers leave)."""
        for name, proc in self.procs().items():
            code = proc.poll()
            if code:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return f"PS {name} (pid {proc.pid}) {how}"
        return None

    def finished(self) -> bool:
        return all(p.poll() is not None for p in self.procs().values())

    def stop(self, grace: float) -> None:
        self.local.stop(grace=grace)
        for proc in self.remote.values():
            _stop_group(proc, grace=1.0)


def start_tier(plan: Plan, opts: argparse.Namespace) -> Tier:
    """Scheduler and servers; raises :class:`HvdPsError` (e.g. port in use)."""
    total = {"DMLC_NUM_SERVER": str(len(plan.servers))}  # local and remote servers
    local = spawn.start(
        plan.local_servers,
        plan.num_workers,
        host=plan.ps_host,
        port=plan.port,
        timeout=plan.timeout,
        env_extra=total,
    )
    tier = Tier(local)
    ssh = shlex.split(opts.ssh_cmd)
    ssh += ["-p", str(opts.ssh_port)] if opts.ssh_port else []
    ssh += ["-i", opts.ssh_identity_file] if opts.ssh_identity_file else []
    for i, host in enumerate(plan.servers):
        if host is None:
            continue
        env = config.ps_environment(
            "server",
            plan.ps_host,
            local.port,
            len(plan.servers),
            plan.num_workers,
            socket.gethostbyname(host),
        )
        env.update(
            {k: os.environ[k] for k in ("PYTHONPATH", "HVD_PS_LOG_LEVEL") if k in os.environ}
        )
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = remote_server_command(ssh, host, env, sys.executable, os.getcwd())
        tier.remote[f"server on {host} #{i}"] = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=spawn._die_with_parent,
        )
    return tier


def ps_exports(plan: Plan, tier: Tier) -> Dict[str, str]:
    """The environment a job needs to join the tier."""
    env = {
        "DMLC_PS_ROOT_URI": plan.ps_host,
        "DMLC_PS_ROOT_PORT": str(tier.local.port),
        "DMLC_NUM_SERVER": str(len(plan.servers)),
        "DMLC_NUM_WORKER": str(plan.num_workers),
    }
    if not plan.remote:
        env["DMLC_NODE_HOST"] = "127.0.0.1" if plan.ps_host.startswith("127.") else plan.ps_host
    return env


# -- processes and signals -------------------------------------------------------------------


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is not None:  # leftovers of the group (e.g. ranks of a killed mpirun)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Signals:
    """Turns SIGINT/SIGTERM into a flag the main loop polls."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = signum


def say(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def _report(tier: Tier, opts: argparse.Namespace) -> None:
    pids = {name: p.pid for name, p in tier.procs().items()}
    if opts.pidfile:
        with open(opts.pidfile, "w") as f:
            f.writelines(f"{pid} {name}\n" for name, pid in pids.items())
    if opts.verbose:
        say("PS tier: " + ", ".join(f"{name} pid {pid}" for name, pid in pids.items()))


def run_job(
    tier: Tier,
    plan: Plan,
    opts: argparse.Namespace,
    forward: List[str],
    command: List[str],
    sigs: Signals,
) -> int:
    """Run horovodrun against the tier; end it if a PS process fails. Returns the exit code."""
    env = dict(os.environ)
    env.pop("DMLC_ROLE", None)
    env.update(ps_exports(plan, tier))
    if opts.timeout is not None:
        env["HVD_PS_TIMEOUT"] = f"{opts.timeout:g}"
    if plan.remote:  # each rank advertises its own address, found at start on its host
        command = [sys.executable, "-m", "hvd_ps.launch", "--exec-rank", "--", *command]
    argv = [opts.horovodrun, *forward, *command]
    if opts.verbose:
        say("running " + shlex.join(argv))
    job = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=spawn._die_with_parent)
    try:
        while job.poll() is None:
            what = tier.failed()
            if what is not None:
                say(f"HvdPsError: {what} during the job; ending it")
                return TIER_DIED
            if sigs.received is not None:
                say(f"got signal {sigs.received}; stopping the job and the PS tier")
                return 128 + sigs.received
            time.sleep(0.1)
        return job.returncode if job.returncode >= 0 else 128 - job.returncode
    finally:
        _stop_group(job, grace=3.0)


def serve(tier: Tier, plan: Plan, sigs: Signals) -> int:
    """``--servers-only``: print the exports, serve until a signal or the servers finish."""
    for k, v in ps_exports(plan, tier).items():
        print(f"export {k}={shlex.quote(v)}")
    sys.stdout.flush()
    while sigs.received is None:
        what = tier.failed()
        if what is not None:
            say(f"HvdPsError: {what}")
            return TIER_DIED
        if tier.finished():
            return 0
        time.sleep(0.2)
    say(f"got signal {sigs.received}; stopping the PS tier")
    return 0


def _exec_rank(command: List[str]) -> int:
    """Rank wrapper for remote hosts: advertise the address that routes to the scheduler."""
    root = os.environ.get("DMLC_PS_ROOT_URI", "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((root, int(os.environ.get("DMLC_PS_ROOT_PORT", "9"))))
        os.environ["DMLC_NODE_HOST"] = s.getsockname()[0]
    os.execvp(command[0], command)
    return 127  # not reached


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["--exec-rank", "--"]:
        return _exec_rank(args[2:])
    parser = _parser()
    try:
        mine, forward, command = split_argv(args, _arity(parser))
        opts = parser.parse_args(mine)
        plan = make_plan(opts, config.load())
        if not opts.servers_only and not command:
            raise UsageError("no command to run (e.g. python train.py)")
        if opts.servers_only and (command or forward):
            raise UsageError(f"--servers-only takes no command: {shlex.join(forward + command)}")
    except (UsageError, HvdPsError) as err:
        parser.error(str(err))  # exits 2
    if not opts.servers_only and shutil.which(opts.horovodrun) is None:
        say(
            f"horovodrun not found ({opts.horovodrun!r} is not on PATH): install horovod "
            "with MPI support, or pass --horovodrun PATH"
        )
        return 127
    sigs = Signals()
    try:
        tier = start_tier(plan, opts)
    except HvdPsError as err:
        say(f"HvdPsError: {err}")
        return 1
    code = 1
    try:
        _report(tier, opts)
        if opts.servers_only:
            code = serve(tier, plan, sigs)
        else:
            code = run_job(tier, plan, opts, forward, command, sigs)
    finally:  # after a clean end the servers are finishing by themselves: give them time
        tier.stop(grace=5.0 if code == 0 and sigs.received is None else 0.5)
    return code


if __name__ == "__main__":
    sys.exit(main())
