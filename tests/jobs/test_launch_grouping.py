"""The grouping said once: to ``hvdps-run --group-size`` or in the script, never both at odds.

Unit tests of the plumbing (flags -> plan -> job environment -> ``hvd_ps.init``'s grouping,
the conflict checks, the rank-0 rendezvous with hvdps-run), then real one-host jobs.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import job_run
import pytest

from hvd_ps import authentication, config, secret, topology
from hvd_ps.errors import ConfigError, TierError
from hvd_ps.launch import cli as launch
from hvd_ps.launch import rendezvous

JOB = str(job_run.PROGRAMS / "train_job.py")


def _plan(*args: str) -> launch.Plan:
    opts = launch._parser().parse_args(list(args))
    return launch.make_plan(opts, config.load({}))


def _topo(groups: List[List[int]]) -> topology.Topology:
    size = sum(len(g) for g in groups)
    return topology.Topology(groups, 0, 0, None, None, ["h"] * size)


# -- flags and plan --------------------------------------------------------------------------


def test_plan_counts_groups_from_the_flag_or_leaves_them_to_the_job() -> None:
    plan = _plan("-np", "4", "--group-size", "2")
    assert (plan.num_workers, plan.group_size) == (2, 2)
    plan = _plan("-np", "4", "--group-size", "2", "--num-groups", "2")
    assert (plan.num_workers, plan.group_size) == (2, 2)
    plan = _plan("-np", "4", "--num-groups", "3")
    assert (plan.num_workers, plan.group_size) == (3, None)
    plan = _plan("-np", "4")
    assert (plan.num_workers, plan.group_size) == (None, None)  # rank 0 will tell


@pytest.mark.parametrize(
    "args, words",
    [
        (["-np", "4", "--group-size", "3"], ["--group-size 3", "-np 4"]),
        (["-np", "4", "--group-size", "0"], ["--group-size 0"]),
        (["-np", "4", "--group-size", "2", "--num-groups", "4"], ["--num-groups 4", "2 groups"]),
        (["--servers-only", "--num-workers", "2", "--group-size", "2"], ["--group-size"]),
    ],
)
def test_bad_grouping_flags_exit_2(
    args: List[str], words: List[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        launch.main([*args, "python", "x.py"] if "--servers-only" not in args else args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_server_hosts_place_the_servers() -> None:
    plan = _plan("-np", "2", "--num-servers", "3", "--server-hosts", "localhost,192.0.2.7",
                 "--ps-host", "192.0.2.9")  # fmt: skip
    assert plan.servers == [None, "192.0.2.7", None] and plan.remote
    with pytest.raises(launch.UsageError, match="--ps-host"):
        _plan("-np", "2", "--server-hosts", "192.0.2.7")


# -- the job's environment -------------------------------------------------------------------


def test_job_environment_with_the_grouping_left_to_the_script(monkeypatch) -> None:
    for k, v in {"DMLC_PS_ROOT_URI": "10.9.9.9", "DMLC_PS_ROOT_PORT": "1", "HVD_PS_NUM_GROUPS":
                 "7", "HVD_PS_GROUP_SIZE": "7", "HVD_PS_LAUNCHER": "x:1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)  # an outer launch's leftovers must not reach this job
    monkeypatch.setenv("DMLC_INTERFACE", "eth1")  # the user's own ps-lite setting stays
    opts = launch._parser().parse_args(["-np", "4"])
    held = secret.Held(None)
    job = launch.Launch(launch.make_plan(opts, config.load({})), opts, held)
    env, listener = launch.job_environment(job)
    assert listener is not None
    try:
        assert env["HVD_PS_SECRET_FILE"] == held.path and secret.load(held.path) == held.key
        assert env["DMLC_INTERFACE"] == "eth1"
        assert env["HVD_PS_LAUNCHER"] == listener.address
        assert re.fullmatch(r"127\.0\.0\.1:\d+", listener.address)
        assert len(held.key) == 2 * secret.SIZE and env["DMLC_NODE_HOST"] == "127.0.0.1"
        for k in (
            "DMLC_PS_ROOT_URI",
            "DMLC_PS_ROOT_PORT",
            "HVD_PS_NUM_GROUPS",
            "HVD_PS_GROUP_SIZE",
        ):
            assert k not in env
        cfg = config.load(env)  # what the ranks' hvd_ps.init reads
        assert cfg.wiring.launcher == ("127.0.0.1", int(listener.address.split(":")[1]))
        assert not cfg.wiring.external_tier and cfg.wiring.launch_group_size is None
        assert cfg.wiring.secret_file == held.path
    finally:
        listener.close()
        held.remove()
    assert not Path(held.path).exists()


def test_job_environment_with_group_size_flag() -> None:
    opts = launch._parser().parse_args(["-np", "4", "--group-size", "2"])
    held = secret.Held(None)
    job = launch.Launch(launch.make_plan(opts, config.load({})), opts, held)
    held.remove()  # (this job never reads it)
    job.start(2)
    try:
        env, listener = launch.job_environment(job)
        assert listener is None
        assert env["HVD_PS_GROUP_SIZE"] == "2" and env["HVD_PS_NUM_GROUPS"] == "2"
        assert env["DMLC_NUM_WORKER"] == "2" and env["DMLC_PS_ROOT_URI"] == "127.0.0.1"
        cfg = config.load(env)
        assert (
            cfg.wiring.launch_group_size,
            cfg.wiring.launch_num_groups,
            cfg.wiring.launcher,
        ) == (2, 2, None)
    finally:
        job.stop(grace=0)
    assert all(p.poll() is not None for p in job.tier.procs().values())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "env, name",
    [
        ({"HVD_PS_GROUP_SIZE": "0"}, "HVD_PS_GROUP_SIZE"),
        ({"HVD_PS_NUM_GROUPS": "two"}, "HVD_PS_NUM_GROUPS"),
        ({"HVD_PS_LAUNCHER": "nohost", "HVD_PS_SECRET_FILE": "f"}, "HVD_PS_LAUNCHER"),
        ({"HVD_PS_LAUNCHER": "h:1"}, "HVD_PS_SECRET_FILE"),
        ({"HVD_PS_ROSTER": "h:1"}, "HVD_PS_SECRET_FILE"),
    ],
)
def test_bad_launcher_variables(env: Dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        config.load(env)


# -- hvd_ps.init's side ----------------------------------------------------------------------


def test_init_takes_the_flag_only_when_the_script_names_no_grouping() -> None:
    cfg = config.load({"HVD_PS_GROUP_SIZE": "2"})
    assert rendezvous.grouping(cfg, None, None) == (2, None)
    assert rendezvous.grouping(cfg, 4, None) == (4, None)  # check() then refuses it
    assert rendezvous.grouping(cfg, None, [[0], [1]]) == (None, [[0], [1]])
    assert rendezvous.grouping(config.load({}), None, None) == (None, None)


def test_check_accepts_agreement_and_names_a_conflict() -> None:
    cfg = config.load({"HVD_PS_GROUP_SIZE": "2", "HVD_PS_NUM_GROUPS": "2"})
    rendezvous.check(cfg, _topo([[0, 1], [2, 3]]))  # same grouping said twice: fine
    with pytest.raises(ConfigError, match=r"\[\[0\], \[1, 2, 3\]\].*--group-size 2"):
        rendezvous.check(cfg, _topo([[0], [1, 2, 3]]))
    with pytest.raises(TierError, match="expects 3 leaders.*makes 2 groups"):
        rendezvous.check(config.load({"HVD_PS_NUM_GROUPS": "3"}), _topo([[0, 1], [2, 3]]))


def _serve_once(listener: rendezvous.Listener, answer: Optional[dict], got: list) -> None:
    """Poll until a request arrives or a peer is refused (10 s at most), as hvdps-run does."""
    refused, end = listener.refused, time.monotonic() + 10
    request = None
    while request is None and listener.refused == refused and time.monotonic() < end:
        request = listener.poll(0.1)
    got.append(request)
    if request is not None and answer is not None:
        got.append((request.num_groups, request.world_size))
        request.answer(answer)


def _ask(path: str, listener: rendezvous.Listener, timeout: str = "10"):
    cfg = config.load({"HVD_PS_LAUNCHER": listener.address, "HVD_PS_SECRET_FILE": path,
                       "HVD_PS_TIMEOUT": timeout})  # fmt: skip
    return rendezvous.ask(cfg, num_groups=2, world_size=4)


def test_rank0_rendezvous_round_trip_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours, theirs = secret.create(str(tmp_path / "ours")), secret.create(str(tmp_path / "theirs"))
    listener = rendezvous.Listener("127.0.0.1", secret.load(ours))
    try:
        got: list = []
        t = threading.Thread(target=_serve_once, args=(listener, {"uri": "127.0.0.1",
                             "port": 4242, "num_servers": 2}, got))  # fmt: skip
        t.start()
        assert _ask(ours, listener) == ("127.0.0.1", 4242, 2)
        t.join(10)
        assert got[1] == (2, 4)
        # another secret: refused before its request is read, and told so
        got = []
        t = threading.Thread(target=_serve_once, args=(listener, None, got))
        t.start()
        with pytest.raises(TierError, match="does not hold the tier's secret.*HVD_PS_SECRET"):
            _ask(theirs, listener)
        t.join(10)
        assert got == [None] and listener.refused == 1
        # hvdps-run's error reaches rank 0
        t = threading.Thread(target=_serve_once, args=(listener, {"error": "port in use"}, []))
        t.start()
        with pytest.raises(TierError, match="could not start the PS tier: port in use"):
            _ask(ours, listener)
        t.join(10)
    finally:
        listener.close()
    with socket.socket() as s:  # nobody listening: a clear error, not a hang
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.load({"HVD_PS_LAUNCHER": f"127.0.0.1:{port}", "HVD_PS_SECRET_FILE": ours})
    with pytest.raises(TierError, match="HVD_PS_LAUNCHER"):
        rendezvous.ask(cfg, 1, 1)


def test_a_stranger_at_the_rendezvous_is_dropped_within_its_time_and_learns_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    """A peer that says nothing, or plain JSON without the proof, holds hvdps-run's listener
    for at most REQUEST_TIME and hears only the hello (a nonce) and the refusal."""
    monkeypatch.setattr(rendezvous, "REQUEST_TIME", 0.5)
    listener = rendezvous.Listener("127.0.0.1", secret.load(secret.create(str(tmp_path))))
    host, port = listener.address.split(":")
    try:
        for n, say in enumerate((b"", b'{"num_groups": 1, "world_size": 1, "token": ""}\n')):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(say)
                got: list = []
                _serve_once(listener, None, got)
                assert got == [None] and listener.refused == n + 1
                heard = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    heard += chunk
            lines = [json.loads(x) for x in heard.splitlines()]
            assert set(lines[0]) == {"hello", "nonce"}, heard
            assert lines[1:] in ([], [{"error": authentication.REFUSED}]), heard
        assert listener.refused == 2
    finally:
        listener.close()


# -- real jobs on one host -------------------------------------------------------------------


def _hvdps_run(args: List[str], limit: int = 120) -> subprocess.CompletedProcess:
    cmd = job_run.bounded(["hvdps-run", *args], limit)
    return job_run.complete(cmd, job_run.env(), timeout=limit + 10)


def _gone(pidfile: Path) -> None:
    """hvdps-run has returned: none of the PS processes it started may be running now."""
    job_run.assert_gone(job_run.pidfile_pids(pidfile), within=0)


def test_issue_command_grouping_in_the_script(tmp_path: Path) -> None:
    # the exact command of the issue: the grouping is said once, in the script's flags
    out = _hvdps_run(["-np", "4", "--pidfile", str(tmp_path / "pids"), "python",
                      "examples/train_digits.py", "--group-size", "2", "--epochs", "2",
                      "--quiet", "--json", str(tmp_path / "d.json")])  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    result = json.loads((tmp_path / "d.json").read_text())
    assert (result["ranks"], result["groups"]) == (4, 2)
    assert result["final_test_accuracy"] > 0.75  # 2 epochs of digits: 0.86 measured
    _gone(tmp_path / "pids")


def test_grouping_given_to_hvdps_run(tmp_path: Path) -> None:
    out = _hvdps_run(["-np", "2", "--group-size", "1", "--pidfile", str(tmp_path / "pids"),
                      "python", JOB])  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    rows = re.findall(r"rank (\d) group (\d) of (\d) loss0 ([\d.]+) loss ([\d.]+) w (\S+)",
                      out.stdout)  # fmt: skip
    assert sorted((r[0], r[1], r[2]) for r in rows) == [("0", "0", "2"), ("1", "1", "2")]
    assert len({r[5] for r in rows}) == 1
    assert all(float(r[4]) < 0.01 * float(r[3]) for r in rows)
    _gone(tmp_path / "pids")


def test_conflict_fails_before_training(tmp_path: Path) -> None:
    out = _hvdps_run(["-np", "2", "--group-size", "1", "--pidfile", str(tmp_path / "pids"),
                      "python", JOB, "--group-size", "2"], limit=90)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert (
        "ConfigError: hvd_ps.init makes the groups [[0, 1]], but hvdps-run --group-size 1" in text
    )
    assert "step 0" not in text  # no training step ran
    _gone(tmp_path / "pids")


def test_a_silent_stranger_does_not_hold_rank0_back(tmp_path: Path) -> None:
    """Strangers that connect and say nothing are held at most REQUEST_TIME each, side by side
    with rank 0: its request is answered at once while they still wait."""
    path = secret.create(str(tmp_path))
    listener = rendezvous.Listener("127.0.0.1", secret.load(path))
    host, port = listener.address.split(":")
    silent = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
    try:
        got: list = []
        t = threading.Thread(target=_serve_once, args=(listener, {"uri": "127.0.0.1",
                             "port": 4242, "num_servers": 1}, got))  # fmt: skip
        t.start()
        start = time.monotonic()
        assert _ask(path, listener) == ("127.0.0.1", 4242, 1)
        assert time.monotonic() - start < rendezvous.REQUEST_TIME  # (each used to hold it so)
        t.join(10)
        assert listener.refused == 0  # the silent ones still have their time
    finally:
        for s in silent:
            s.close()
        listener.close()
