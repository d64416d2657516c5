"""Tests of ``hvdps-run`` (hvd_ps/launch/cli.py): flags, and real jobs on loopback.

The real jobs run ``python -m hvd_ps.launch`` (what the ``hvdps-run`` console script calls)
under ``timeout -k``, with tests/jobs/programs/launch_job.py as the training script. After each one
the test checks that no PS process (from ``--pidfile``) and no rank of the job is left.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import job_run  # tests/job_run.py
import pytest

from hvd_ps.launch import cli as launch

JOB = str(job_run.PROGRAMS / "launch_job.py")


def _cmd(args: List[str], limit: int) -> List[str]:
    return job_run.bounded(job_run.launcher(*args), limit)


def _run(args: List[str], limit: int = 120) -> subprocess.CompletedProcess:
    return job_run.complete(_cmd(args, limit), job_run.env(), timeout=limit + 10)


def _start(args: List[str], limit: int = 120, **env: str) -> subprocess.Popen:
    return job_run.start(_cmd(args, limit), job_run.env(**env))


def _assert_all_gone(pidfile: Path, token: Optional[str] = None, within: float = 10.0) -> None:
    pids = job_run.pidfile_pids(pidfile)
    assert pids, "hvdps-run wrote no PIDs"
    job_run.assert_gone(pids, token, within)


def _values(output: str) -> Dict[int, List[float]]:
    got: Dict[int, List[float]] = {}
    for rank, value in re.findall(r"rank (\d+) round \d+ value ([\d.]+)", output):
        got.setdefault(int(rank), []).append(float(value))
    return got


# -- command line (in process, fast) ---------------------------------------------------------


def test_help_and_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        launch.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--num-servers", "--num-groups", "--servers-only", "--ps-host", "--ssh-cmd"):
        assert flag in text
    with pytest.raises(SystemExit) as info:
        launch.main(["--version"])
    assert info.value.code == 0
    assert "hvdps-run" in capsys.readouterr().out


def test_help_as_a_program() -> None:
    out = _run(["--help"], limit=60)
    assert out.returncode == 0 and "--num-groups" in out.stdout


@pytest.mark.parametrize(
    "args, flag",
    [
        (["-np", "2", "--num-servers", "0", "python", "x.py"], "--num-servers"),
        (["-np", "2", "--num-servers", "two", "python", "x.py"], "--num-servers"),
        (["-np", "2", "--num-server", "2", "python", "x.py"], "--num-servers"),
        (["-np", "2", "--num-groups", "0", "python", "x.py"], "--num-groups"),
        (["-np", "2", "--ps-port", "70000", "python", "x.py"], "--ps-port"),
        (["-np", "2", "--timeout", "-1", "python", "x.py"], "--timeout"),
        (["python", "x.py"], "-np"),
        (["-np", "2"], "command"),
        (["--servers-only", "--num-servers", "2"], "--num-workers"),
        (["--servers-only", "--num-workers", "2", "python", "x.py"], "--servers-only"),
        (["-np", "2", "--allow-stock-workers", "python", "x.py"], "--allow-stock-workers"),
        (["--servers-only", "--num-workers", "1", "--no-tunnels"], "--no-tunnels"),
        (["-np", "2", "-H", "a:two", "python", "x.py"], "slots 'two'"),
        (
            ["--servers-only", "--num-workers", "1", "--secret-file", "/nonexistent/s"],
            "--secret-file=/nonexistent/s cannot be read",
        ),
        (["-np", "2", "-H", "192.0.2.1:2", "python", "x.py"], "--ps-host"),
        (["-np", "2", "-H", "a:1", "--hostfile", "f", "python", "x.py"], "--hostfile"),
        (["-np", "2", "--hostfile", "/nonexistent/hosts", "python", "x.py"], "--hostfile"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    args: List[str], flag: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        launch.main(args)
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_missing_horovodrun(capsys: pytest.CaptureFixture) -> None:
    code = launch.main(["-np", "1", "--horovodrun", "/nonexistent/horovodrun", "python", "x"])
    assert code == 127
    assert "horovodrun not found" in capsys.readouterr().err


def test_split_argv_forwards_what_it_does_not_know() -> None:
    ours = launch._arity(launch._parser())
    argv = ["-np", "4", "--num-servers", "2", "--fusion-threshold-mb", "32", "--tcp",
            "--blacklist-cooldown-range", "1", "2", "--log-level=DEBUG", "-H", "a:2,b:2",
            "python", "train.py", "--num-servers", "9", "-np", "1"]  # fmt: skip
    mine, forward, command = launch.split_argv(argv, ours)
    assert mine == ["-np", "4", "--num-servers", "2", "-H", "a:2,b:2"]
    assert forward == ["-np", "4", "--fusion-threshold-mb", "32", "--tcp",
                       "--blacklist-cooldown-range", "1", "2", "--log-level=DEBUG",
                       "-H", "a:2,b:2"]  # fmt: skip
    assert command == ["python", "train.py", "--num-servers", "9", "-np", "1"]
    assert launch.split_argv(["-np", "1", "--", "-weird"], ours)[2] == ["-weird"]


def test_hosts_and_plan(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n# comment\n127.0.0.1 slots=2\n")
    assert launch.parse_hosts(None, str(hostfile)) == ["localhost", "127.0.0.1"]
    assert launch.parse_hosts("a:2,b:2,a:1", None) == ["a", "b"]
    assert launch.is_local("localhost") and not launch.is_local("192.0.2.1")
    opts = launch._parser().parse_args(["-np", "4", "-H", "localhost:2,127.0.0.1:2"])
    plan = launch.make_plan(opts, launch.config.load({}))
    # no grouping flag: the tier waits for rank 0 to report the script's number of groups
    assert (plan.num_workers, plan.servers, plan.remote) == (None, [None], False)
    opts = launch._parser().parse_args(
        [
            "-np",
            "4",
            "-H",
            "localhost:2,192.0.2.1:2",
            "--ps-host",
            "192.0.2.9",
            "--num-servers",
            "3",
        ]  # fmt: skip
    )
    plan = launch.make_plan(opts, launch.config.load({}))
    assert plan.servers == [None, "192.0.2.1", None] and plan.remote
    # a job with remote hosts talks through the tunnels unless told not to
    assert plan.tunnels and plan.hosts == {"localhost": 2, "192.0.2.1": 2}
    opts = launch._parser().parse_args(["-np", "2", "-H", "192.0.2.1:2", "--ps-host",
                                        "192.0.2.9", "--no-tunnels"])  # fmt: skip
    assert not launch.make_plan(opts, launch.config.load({})).tunnels


def test_slots_of_hosts_and_hostfiles(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=4\nb:2\nc\n# comment\na slots=1\n")
    assert launch.parse_slots(None, str(hostfile)) == {"a": 5, "b": 2, "c": 1}
    assert launch.parse_slots("a:2,b,a:1", None) == {"a": 3, "b": 1}


def test_remote_server_command_quotes_everything() -> None:
    cmd = launch.remote_server_command(
        ["ssh", "-o", "BatchMode=yes", "-p", "2222"], "b", {"A": "x y", "B": "1"}, "/p y/python",
        "/w d",
    )  # fmt: skip
    assert cmd[:5] == ["ssh", "-o", "BatchMode=yes", "-p", "2222"] and cmd[5] == "b"
    assert cmd[6] == "cd '/w d' 2>/dev/null; exec env A='x y' B=1 '/p y/python' -m hvd_ps.server"


# -- real jobs -------------------------------------------------------------------------------


def test_job_exchanges_through_the_tier_and_cleans_up(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    out = _run(["-np", "2", "--num-servers", "2", "--num-groups", "2", "--pidfile", str(pidfile),
                "--verbose", "python", JOB, "3", "0", "0", str(tmp_path)])  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # two leaders push 1*(r+1) and 2*(r+1): every sync round pulls 3*(r+1)
    assert _values(out.stdout) == {0: [3, 6, 9], 1: [3, 6, 9]}
    assert "DMLC_PS_ROOT_URI" in out.stdout  # horovodrun --verbose shows it forwarded
    assert "server 1 pid" in out.stderr
    _assert_all_gone(pidfile, str(tmp_path))


def test_exit_code_of_the_job_is_returned(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    out = _run(["-np", "2", "--num-groups", "2", "--pidfile", str(pidfile), "python", JOB,
                "1", "0", "3", str(tmp_path)])  # fmt: skip
    assert out.returncode == 3, out.stderr[-3000:]
    _assert_all_gone(pidfile, str(tmp_path))


def test_groups_mismatch_fails(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    out = _run(["-np", "2", "--num-groups", "1", "--timeout", "8", "--pidfile", str(pidfile),
                "python", JOB, "2", "0", "0", str(tmp_path)])  # fmt: skip
    assert out.returncode != 0
    # hvd_ps.init checks the script's grouping against --num-groups before any PS traffic
    assert re.search(r"HvdPsError|TierError", out.stdout + out.stderr)
    assert "expects 1 leaders (--num-groups 1), this job's hvd_ps.init makes 2 groups" in out.stderr
    _assert_all_gone(pidfile, str(tmp_path))


def test_server_killed_mid_job_ends_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    proc = _start(["-np", "2", "--num-servers", "2", "--num-groups", "2", "--pidfile",
                   str(pidfile), "python", JOB, "1000", "0.1", "0", str(tmp_path)])  # fmt: skip
    try:
        job_run.read_until(proc, r"round 3 ")
        server = [ln.split()[0] for ln in pidfile.read_text().splitlines() if "server 1" in ln]
        os.kill(int(server[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        job_run.kill([proc])
    assert proc.returncode == launch.TIER_DIED
    assert f"PS server 1 (pid {server[0]}) was killed by signal 9" in err
    _assert_all_gone(pidfile, str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_job_and_tier(tmp_path: Path, sig: int) -> None:
    """SIGTERM, and Ctrl-C's SIGINT (what the README tells a user to send to hvdps-run)."""
    pidfile = tmp_path / "pids"
    proc = _start(["-np", "2", "--num-groups", "2", "--pidfile", str(pidfile), "python", JOB,
                   "1000", "0.1", "0", str(tmp_path)])  # fmt: skip
    try:
        job_run.read_until(proc, r"round 2 ")
        os.kill(proc.pid, sig)  # the timeout wrapper passes it on to hvdps-run
        _, err = proc.communicate(timeout=60)
    finally:
        job_run.kill([proc])
    assert proc.returncode == 128 + sig, err[-3000:]
    _assert_all_gone(pidfile, str(tmp_path))


def test_servers_only_serves_two_independent_jobs(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    jobs: List[subprocess.Popen] = []
    tier = _start(["--servers-only", "--num-servers", "2", "--num-workers", "2", "--pidfile",
                   str(pidfile)])  # fmt: skip
    try:
        exports = job_run.exports(job_run.read_until(tier, r"^# and in each job", limit=60))
        assert exports["DMLC_NUM_SERVER"] == "2" and exports["DMLC_NUM_WORKER"] == "2"
        assert exports["DMLC_PS_ROOT_URI"] == "127.0.0.1"
        assert exports["HVD_PS_TOTAL_GROUPS"] == "2"
        job = ["horovodrun", "-np", "1", sys.executable, JOB, "3", "0", "0", str(tmp_path)]
        jobs = [
            job_run.start(
                job_run.bounded(job, 120),
                job_run.env(HVD_PS_TIMEOUT="20", HVD_PS_GROUP_OFFSET=str(i), **exports),
            )
            for i in range(2)
        ]
        for code, out, err in job_run.finish_all(jobs, 150):
            assert code == 0, out + err[-3000:]
            # each job is one group (global ids 0 and 1) pushing (id+1)*(r+1): a round sums
            # both jobs
            assert _values(out) == {0: [3, 6, 9]}
        tier.communicate(timeout=30)  # the servers finish once both workers have left
        assert tier.returncode == 0
    finally:
        job_run.kill([tier, *jobs])
    _assert_all_gone(pidfile, str(tmp_path))


def test_servers_only_port_in_use_and_sigint(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pidfile = tmp_path / "pids"
    args = ["--servers-only", "--num-workers", "1", "--ps-port", str(port)]
    tier = _start([*args, "--pidfile", str(pidfile)])
    try:
        job_run.read_until(tier, r"^export DMLC_NUM_WORKER=", limit=60)
        second = _run(args, limit=60)
        assert second.returncode not in (0, 2)
        assert f"port {port} on 127.0.0.1 is in use" in second.stderr
        assert "HvdPsError" in second.stderr
        os.kill(tier.pid, signal.SIGINT)  # the timeout wrapper passes it on to hvdps-run
        tier.communicate(timeout=30)
        assert tier.returncode == 0
    finally:
        job_run.kill([tier])
    _assert_all_gone(pidfile)


def test_rank_wrapper_advertises_the_address_routing_to_the_scheduler() -> None:
    # used for jobs with remote hosts: each rank finds its own DMLC_NODE_HOST on its host
    out = job_run.complete(
        _cmd(["--exec-rank", "--", "sh", "-c", "echo node=$DMLC_NODE_HOST"], 60),
        job_run.env(DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT="9000"),
        timeout=70,
    )
    assert out.returncode == 0 and out.stdout.strip() == "node=127.0.0.1", out.stderr


@pytest.mark.parametrize("local_rank, port", [("0", "21000"), ("1", "21001")])
def test_rank_wrapper_in_a_job_with_tunnels_binds_loopback(local_rank: str, port: str) -> None:
    # HVD_PS_TUNNELS: each host's leader ports; 127.0.0.1 is this host's (it can bind it)
    out = job_run.complete(
        _cmd(["--exec-rank", "--", "sh", "-c", "echo node=$DMLC_NODE_HOST:$PORT"], 60),
        job_run.env(
            DMLC_PS_ROOT_URI="127.0.0.1",
            DMLC_PS_ROOT_PORT="9000",
            HVD_PS_TUNNELS="192.0.2.1:21002-21003,127.0.0.1:21000-21001",
            OMPI_COMM_WORLD_LOCAL_RANK=local_rank,
        ),  # fmt: skip
        timeout=70,
    )
    assert out.returncode == 0 and out.stdout.strip() == f"node=127.0.0.1:{port}", out.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"HVD_PS_TUNNELS": "127.0.0.1:21000-21001", "OMPI_COMM_WORLD_LOCAL_RANK": "2"},
            "ConfigError: HVD_PS_TUNNELS: local rank 2 on 127.0.0.1 is beyond the host's 2 slots",
        ),
        (
            {"HVD_PS_TUNNELS": "192.0.2.1:21000-21001", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
            "ConfigError: HVD_PS_TUNNELS names no address of this host",
        ),
        (
            {"HVD_PS_TUNNELS": "127.0.0.1:21000"},
            "ConfigError: HVD_PS_TUNNELS='127.0.0.1:21000': '127.0.0.1:21000' is not "
            "ADDR:FIRST-LAST",
        ),
    ],
)
def test_rank_wrapper_with_bad_tunnel_ports_fails_naming_them(env, message) -> None:
    out = job_run.complete(
        _cmd(["--exec-rank", "--", "sh", "-c", "echo ran"], 60),
        job_run.env(DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT="9000", **env),
        timeout=70,
    )
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert out.stderr.startswith(f"hvdps-run: {message}"), out.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "ConfigError: --exec-rank needs DMLC_PS_ROOT_URI or HVD_PS_LAUNCHER"),
        (
            {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "ninety"},
            "ConfigError: DMLC_PS_ROOT_PORT='ninety' is not a valid int",
        ),
    ],
)
def test_rank_wrapper_without_a_valid_scheduler_address_fails_naming_it(env, message) -> None:
    out = job_run.complete(
        _cmd(["--exec-rank", "--", "sh", "-c", "echo ran"], 60), job_run.env(**env), timeout=70
    )
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert out.stderr.startswith(f"hvdps-run: {message}"), out.stderr
