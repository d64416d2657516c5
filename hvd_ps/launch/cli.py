"""``hvdps-run``: start the PS tier, run ``horovodrun`` against it, stop everything after.

Usage::

    hvdps-run -np 4 [-H a:2,b:2 | --hostfile F] [--num-servers 2] [--server-hosts a,b]
              [--group-size N | --num-groups G] [--ps-host ADDR] [--ps-port P] [--timeout S]
              [horovodrun flags] python train.py ...
    hvdps-run --servers-only --num-servers 2 --num-workers G [--ps-port P] [--ps-host ADDR]

Job mode runs ``horovodrun`` with every flag hvdps-run does not know itself, and a ps-lite
scheduler on this host and ``--num-servers`` servers (round robin over ``--server-hosts``,
default the ``-H`` hosts; this host for local ones, over ``--ssh-cmd`` for the others). The
tier must know its number of PS workers (= groups) when it starts. The grouping is said once
(:mod:`hvd_ps.launch.rendezvous`): with ``--group-size N`` (which the script's ``hvd_ps.init()``
picks up) or ``--num-groups G`` the tier starts before the job and ``DMLC_PS_ROOT_URI``,
``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER`` go in the job's environment; without them the
script's own grouping applies: global rank 0's ``hvd_ps.init`` reports its number of groups
to hvdps-run, which then starts the tier and answers with its address. A script whose
grouping contradicts the flags fails in ``hvd_ps.init`` before training. A PS process that
fails ends the job with a message naming it; ``hvdps-run`` exits with the job's exit code and
never leaves a PS process behind. With only local hosts everything binds 127.0.0.1. With
remote hosts ``--ps-host`` is required, and every ps-lite node still binds 127.0.0.1: the
tier's TLS tunnels carry ps-lite's traffic between hosts (:mod:`hvd_ps.launch.tunnels`,
started first and stopped last; ``--no-tunnels``: the nodes bind the hosts' addresses).

``--servers-only`` starts just the tier, prints the ``export`` lines for it and serves until
SIGINT/SIGTERM or until all ``--num-workers`` groups, possibly from several independent
``horovodrun`` jobs, have left (or no group is alive and a dead one has not rejoined within
``HVD_PS_TIMEOUT``: exit 1). The exports include ``HVD_PS_TOTAL_GROUPS`` (= ``--num-workers``,
the groups of all jobs), ``HVD_PS_ROSTER``, where each leader holds a lease so that the tier
reports a group's death and lets a restarted async job rejoin (:mod:`hvd_ps.ps.roster`), and
``HVD_PS_SECRET_FILE``; each job adds its own ``HVD_PS_GROUP_OFFSET``, the global id of its
first group.

Every tier has a secret (:mod:`hvd_ps.secret`): a new random one, in a file only this user may
read, removed at the end, or the file ``--secret-file`` names (mode 600 checked). The job gets
its path in ``HVD_PS_SECRET_FILE``; rank 0 and the leaders prove they hold it before the
rendezvous and the roster act on what they say (:mod:`hvd_ps.authentication`).

Exit codes: the job's own; 2 for bad flags; 1 when the tier cannot start; 75 when a PS
process dies during the job; 127 when ``horovodrun`` is missing; 128+N after signal N.
"""

from __future__ import annotations

import argparse
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

from .. import addresses, config, secret
from ..deadline import EXIT_CODE as TIER_DIED
from ..errors import ConfigError, HvdPsError, TierError
from ..ps.roster import Roster
from . import processes, rendezvous, spawn
from .args import (  # noqa: F401 - re-exported for tests and users
    PROG,
    Plan,
    UsageError,
    _arity,
    _parser,
    is_local,
    make_plan,
    parse_hosts,
    parse_slots,
    split_argv,
)
from .tunnels import PortPlan, Tunnels, make_ports

# -- the tier --------------------------------------------------------------------------------

#: what every ps-lite node of a job with tunnels binds and advertises
LOOPBACK = "127.0.0.1"


def remote_server_command(
    ssh: Sequence[str], host: str, env: Dict[str, str], python: str, cwd: str
) -> List[str]:
    """The command that runs one PS server on ``host`` over the remote shell ``ssh``."""
    return processes.remote_command(ssh, host, env, python, cwd, ["-m", "hvd_ps.server"])


@dataclass
class Tier:
    """The scheduler and local servers (:class:`spawn.LocalTier`) plus remote servers."""

    local: spawn.LocalTier
    remote: Dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def procs(self) -> Dict[str, subprocess.Popen[bytes]]:
        return {**self.local.procs, **self.remote}

    def failed(self) -> Optional[str]:
        """A PS process that ended badly (clean exits are servers seeing all workers leave)."""
        for name, proc in self.procs().items():
            if proc.poll():
                return processes.ended(f"PS {name}", proc)
        return None

    def finished(self) -> bool:
        """Every server has exited (a sync job's leaders stop them as they leave; the
        scheduler of a ``--servers-only`` tier, hvd_ps's own, waits to be stopped)."""
        return all(p.poll() is not None for n, p in self.procs().items() if n != "scheduler")

    def stop(self, grace: float) -> None:
        self.local.stop(grace=grace)
        processes.stop_groups(list(self.remote.values()), grace=1.0)


def start_tier(
    plan: Plan, opts: argparse.Namespace, num_workers: int, ports: Optional[PortPlan]
) -> Tier:
    """Scheduler and servers for ``num_workers`` PS workers; with ``ports`` (the job's tunnels)
    every one binds 127.0.0.1 at its planned port. Raises :class:`HvdPsError`."""
    total = {"DMLC_NUM_SERVER": str(len(plan.servers))}  # local and remote servers
    total.update(_heartbeats(opts))
    local_ports = None
    if ports is not None:
        local_ports = [p for h, p in zip(plan.servers, ports.servers) if h is None]
    local = spawn.start(
        plan.local_servers,
        num_workers,
        host=plan.ps_host if ports is None else LOOPBACK,
        port=plan.port if ports is None else ports.scheduler,
        timeout=plan.timeout,
        env_extra=total,
        announced=opts.servers_only,
        server_ports=local_ports,
    )
    tier = Tier(local)
    try:
        _start_remote(tier, plan, opts, num_workers, ports)
    except (OSError, HvdPsError) as err:
        tier.stop(grace=0)
        raise TierError(f"cannot start the remote PS servers: {err}") from None
    return tier


def remote_shell(opts: argparse.Namespace) -> List[str]:
    """``--ssh-cmd`` with ``--ssh-port`` and ``--ssh-identity-file``."""
    ssh = shlex.split(opts.ssh_cmd)
    ssh += ["-p", str(opts.ssh_port)] if opts.ssh_port else []
    ssh += ["-i", opts.ssh_identity_file] if opts.ssh_identity_file else []
    return ssh


def _start_remote(
    tier: Tier,
    plan: Plan,
    opts: argparse.Namespace,
    num_workers: int,
    ports: Optional[PortPlan],
) -> None:
    ssh = remote_shell(opts)
    for i, host in enumerate(plan.servers):
        if host is None:
            continue
        address = socket.gethostbyname(host) if ports is None else LOOPBACK
        root = plan.ps_host if ports is None else LOOPBACK
        ps = config.ps_environment(
            "server", root, tier.local.port, len(plan.servers), num_workers, address
        )
        if ports is not None:
            ps.update(config.node_port(ports.servers[i]))
        elif tier.local.announced:  # a port free here, most likely free there too
            port = addresses.free_port(plan.ps_host)
            ps.update(config.node_port(port))
            tier.local.announce("server", address, port)
        env = config.remote_server_environment({**ps, **_heartbeats(opts)})
        cmd = remote_server_command(ssh, host, env, sys.executable, os.getcwd())
        tier.remote[f"server on {host} #{i}"] = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=processes.die_with_parent,
        )


def _heartbeats(opts: argparse.Namespace) -> Dict[str, str]:
    """A tier that jobs may leave and rejoin (``--servers-only``) runs ps-lite's heartbeats and
    hvd_ps's scheduler (:mod:`hvd_ps.ps.scheduler`: ps-lite's takes one node recovery in its
    life)."""
    if not opts.servers_only:
        return {}
    return {
        **config.heartbeat_environment(config.load().settings.heartbeat),
        "HVD_PS_OWN_SCHEDULER": "1",
        "HVD_PS_ANNOUNCED": "server" if opts.allow_stock_workers else "server,worker",
    }


def node_host(plan: Plan) -> Dict[str, str]:
    """``DMLC_NODE_HOST`` for a job on this host only (remote ranks find theirs at start)."""
    if plan.remote:
        return {}
    return {"DMLC_NODE_HOST": "127.0.0.1" if plan.ps_host.startswith("127.") else plan.ps_host}


def ps_exports(plan: Plan, tier: Tier) -> Dict[str, str]:
    """The environment a job needs to join the tier."""
    env = {
        "DMLC_PS_ROOT_URI": LOOPBACK if plan.tunnels else plan.ps_host,
        "DMLC_PS_ROOT_PORT": str(tier.local.port),
        "DMLC_NUM_SERVER": str(len(plan.servers)),
        "DMLC_NUM_WORKER": str(tier.local.num_workers),
    }
    env.update(node_host(plan))
    return env


# -- processes and signals -------------------------------------------------------------------


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


@dataclass
class Launch:
    """What this hvdps-run starts: the tier, once its number of workers is known."""

    plan: Plan
    opts: argparse.Namespace
    secret: secret.Held
    tier: Optional[Tier] = None
    #: the tunnels of a job on several hosts (started first, stopped last)
    tunnels: Optional[Tunnels] = None

    @property
    def ports(self) -> Optional[PortPlan]:
        return None if self.tunnels is None else self.tunnels.ports

    def open_tunnels(self) -> None:
        """A job with remote hosts: plan the nodes' ports and start a tunnel endpoint on every
        host (:mod:`hvd_ps.launch.tunnels`)."""
        ports = make_ports(self.plan, is_local, self.plan.port)
        self.tunnels = Tunnels(ports, self.secret.key, remote_shell(self.opts))
        if self.opts.verbose:
            say("tunnels: " + "; ".join(h.spec() for h in ports.hosts))
        self.tunnels.start(self.plan.timeout)

    def start(self, num_workers: int) -> Tier:
        self.tier = start_tier(self.plan, self.opts, num_workers, self.ports)
        _report(self.tier, self.opts)
        return self.tier

    def failed(self) -> Optional[str]:
        """A PS process or tunnel endpoint that ended badly during the job, described."""
        what = self.tier.failed() if self.tier is not None else None
        if what is None and self.tunnels is not None:
            what = self.tunnels.failed()
        return what

    def stop(self, grace: float) -> None:
        if self.tier is not None:
            self.tier.stop(grace=grace)
        if self.tunnels is not None:
            self.tunnels.stop()


def job_environment(launch: Launch) -> Tuple[Dict[str, str], Optional[rendezvous.Listener]]:
    """The job's environment, and the listener for rank 0 when the tier waits for the job."""
    plan = launch.plan
    env = config.job_environment()
    env["HVD_PS_SECRET_FILE"] = launch.secret.path
    if launch.ports is not None:
        env["HVD_PS_TUNNELS"] = launch.ports.ranks_env()
    if plan.group_size is not None:
        env["HVD_PS_GROUP_SIZE"] = str(plan.group_size)
    if launch.opts.timeout is not None:
        env["HVD_PS_TIMEOUT"] = f"{launch.opts.timeout:g}"
    if launch.tier is not None:
        env.update(ps_exports(plan, launch.tier))
        env["HVD_PS_NUM_GROUPS"] = str(launch.tier.local.num_workers)
        return env, None
    try:
        listener = rendezvous.Listener(plan.ps_host, launch.secret.key)
    except OSError as err:
        raise HvdPsError(f"cannot listen on --ps-host {plan.ps_host}: {err.strerror}") from None
    env.update(node_host(plan), HVD_PS_LAUNCHER=listener.address)
    return env, listener


def _answer(launch: Launch, request: rendezvous.Request) -> None:
    """Rank 0 told us the job's groups: start the tier for them and send its address."""
    if request.world_size != launch.opts.num_proc:
        request.answer({"error": f"the job has {request.world_size} ranks, not -np"})
        return
    try:
        tier = launch.start(request.num_groups)
    except HvdPsError as err:
        say(f"HvdPsError: {err}")
        request.answer({"error": str(err)})
        return
    if launch.opts.verbose:
        say(f"the job makes {request.num_groups} groups: PS tier started for them")
    uri = LOOPBACK if launch.plan.tunnels else launch.plan.ps_host
    servers = len(launch.plan.servers)
    request.answer({"uri": uri, "port": tier.local.port, "num_servers": servers})


def run_job(launch: Launch, forward: List[str], command: List[str], sigs: Signals) -> int:
    """Run horovodrun against the tier; end it if a PS process fails. Returns the exit code."""
    env, listener = job_environment(launch)
    if launch.plan.remote:  # each rank advertises its own address, found at start on its host
        command = [sys.executable, "-m", "hvd_ps.launch", "--exec-rank", "--", *command]
    argv = [launch.opts.horovodrun, *forward, *command]
    if launch.opts.verbose:
        say("running " + shlex.join(argv))
    job = subprocess.Popen(
        argv, env=env, start_new_session=True, preexec_fn=processes.die_with_parent
    )
    try:
        while job.poll() is None:
            if listener is None:
                time.sleep(0.1)
            else:
                request = listener.poll(0.1)
                if request is not None:
                    listener.close()
                    listener = None
                    _answer(launch, request)
            what = launch.failed()
            if what is not None:
                say(f"HvdPsError: {what} during the job; ending it")
                return TIER_DIED
            if sigs.received is not None:
                say(f"got signal {sigs.received}; stopping the job and the PS tier")
                return 128 + sigs.received
        return job.returncode if job.returncode >= 0 else 128 - job.returncode
    finally:
        if listener is not None:
            listener.close()
        processes.stop_groups([job], grace=3.0)


def serve(tier: Tier, plan: Plan, held: secret.Held, sigs: Signals) -> int:
    """``--servers-only``: print the exports, serve until a signal, until the servers finish
    (sync jobs stop them when all leaders have left) or until the roster says every group has
    left (async groups leave alone) or died for good (:mod:`hvd_ps.ps.roster`).

    Besides the tier's address every job gets ``HVD_PS_TOTAL_GROUPS`` (the groups of all
    jobs), ``HVD_PS_ROSTER`` and ``HVD_PS_SECRET_FILE`` (the roster admits only leaders that
    prove they hold the secret: :mod:`hvd_ps.authentication`); a comment line says that each
    job also sets ``HVD_PS_GROUP_OFFSET``, the global id of its first group (see
    :mod:`hvd_ps.ps.placement`)."""
    total = tier.local.num_workers
    cfg = config.load()
    try:
        roster = Roster(
            plan.ps_host, total, cfg.settings.heartbeat, cfg.settings.timeout, say, held.key,
            announce=tier.local.announce,
        )  # fmt: skip
    except OSError as err:
        raise HvdPsError(f"cannot listen on --ps-host {plan.ps_host}: {err.strerror}") from None
    print(f"export HVD_PS_TOTAL_GROUPS={total}")
    exports = {"HVD_PS_ROSTER": roster.address, "HVD_PS_SECRET_FILE": held.path}
    for k, v in {**ps_exports(plan, tier), **exports}.items():
        print(f"export {k}={shlex.quote(v)}")
    print(
        f"# and in each job: export HVD_PS_GROUP_OFFSET=<global id of its first group, "
        f"0..{total - 1}> (the jobs' groups must take every id once)"
    )
    sys.stdout.flush()
    try:
        while sigs.received is None:
            what = tier.failed()
            if what is not None:
                say(f"HvdPsError: {what}")
                return TIER_DIED
            if tier.finished():
                tier.stop(grace=2.0)
                return 0
            done = roster.finished()
            if done is not None:
                code, why = done
                say(f"{why}; stopping the PS tier" if code == 0 else f"HvdPsError: {why}")
                tier.stop(grace=2.0)  # sync servers finish alone; async ones wait for no one
                return code
            roster.poll(0.2)
    finally:
        roster.close()
    say(f"got signal {sigs.received}; stopping the PS tier")
    return 0


def _exec_rank(command: List[str]) -> int:
    """Rank wrapper for remote hosts: set ``DMLC_NODE_HOST`` to this host's address on the
    route to the scheduler (or, before the tier starts, to hvdps-run), then exec ``command``.
    Returns only on failure: 1 for a bad environment, 127 when ``command`` cannot run."""
    try:
        cfg = config.load()
        root = cfg.wiring.ps_root_uri or (cfg.wiring.launcher[0] if cfg.wiring.launcher else None)
        if root is None:
            raise ConfigError(
                "--exec-rank needs DMLC_PS_ROOT_URI or HVD_PS_LAUNCHER in the environment "
                "(hvdps-run sets one of them)"
            )
        if cfg.wiring.tunnels:  # every ps-lite node of the job binds loopback (tunnels)
            config.set_node_host(LOOPBACK)
            config.set_node_port(config.tunnel_port(cfg.wiring.tunnels, addresses.can_bind))
        else:
            config.set_node_host(addresses.route_address(root))
    except HvdPsError as err:
        say(f"{type(err).__name__}: {err}")
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as err:
        say(f"cannot run {command[0]!r}: {err.strerror}")
    return 127


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
        if opts.secret_file is not None:
            secret.load(opts.secret_file, "--secret-file")  # a bad file is a bad flag
    except (UsageError, HvdPsError) as err:
        parser.error(str(err))  # exits 2
    if not opts.servers_only and shutil.which(opts.horovodrun) is None:
        say(
            f"horovodrun not found ({opts.horovodrun!r} is not on PATH): install horovod "
            "with MPI support, or pass --horovodrun PATH"
        )
        return 127
    try:
        held = secret.Held(opts.secret_file)
    except (OSError, HvdPsError) as err:  # (the file changed since, or no temporary dir)
        say(f"HvdPsError: cannot hold the tier's secret: {err}")
        return 1
    sigs = Signals()
    launch = Launch(plan, opts, held)
    code = 1
    try:
        if plan.tunnels:
            launch.open_tunnels()
        if plan.num_workers is not None:  # known now; else rank 0 tells us (run_job)
            launch.start(plan.num_workers)
        if launch.tier is not None and opts.servers_only:
            code = serve(launch.tier, plan, held, sigs)
        else:
            code = run_job(launch, forward, command, sigs)
    except HvdPsError as err:
        say(f"HvdPsError: {err}")
        code = 1
    finally:  # after a clean end the servers are finishing by themselves: give them time
        launch.stop(grace=5.0 if code == 0 and sigs.received is None else 0.5)
        held.remove()
    return code


if __name__ == "__main__":
    sys.exit(main())
