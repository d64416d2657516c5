"""hvd_ps.config.load: defaults, overrides, and a ConfigError naming every bad variable."""

from __future__ import annotations

import pytest

from hvd_ps import config
from hvd_ps.errors import ConfigError, HvdPsError


def test_defaults():
    cfg = config.load({})
    assert cfg == config.Config()
    assert cfg.settings.timeout == 300.0
    assert cfg.settings.num_servers == 1
    assert cfg.settings.fusion_threads == 0
    assert cfg.settings.wire_dtype == "float32"
    assert cfg.settings.log_level == "WARNING"
    assert cfg.wiring.node_host is None  # 127.0.0.1 on one host, else the route to the scheduler
    assert (
        cfg.wiring.ps_root_uri is None
        and cfg.wiring.ps_root_port is None
        and cfg.wiring.ps_num_servers is None
    )
    assert cfg.wiring.ps_num_workers is None
    assert cfg.wiring.external_tier is False


def test_blank_values_mean_default():
    env = {k: " " for k in ("HVD_PS_TIMEOUT", "HVD_PS_NUM_SERVERS", "HVD_PS_FUSION_THREADS")}
    env.update(HVD_PS_WIRE_DTYPE="", DMLC_PS_ROOT_URI="", DMLC_NODE_HOST="")
    assert config.load(env) == config.Config()


def test_overrides():
    cfg = config.load(
        {
            "HVD_PS_TIMEOUT": "2.5",
            "HVD_PS_NUM_SERVERS": "3",
            "HVD_PS_FUSION_THREADS": "2",
            "HVD_PS_WIRE_DTYPE": "float16",
            "HVD_PS_LOG_LEVEL": "info",
            "DMLC_PS_ROOT_URI": "10.0.0.7",
            "DMLC_PS_ROOT_PORT": "9091",
            "DMLC_NUM_SERVER": "2",
            "DMLC_NUM_WORKER": "5",
            "DMLC_NODE_HOST": "10.0.0.8",
        }
    )
    assert cfg == config.Config(
        config.Settings(
            timeout=2.5, num_servers=3, fusion_threads=2, wire_dtype="float16", log_level="INFO"
        ),
        config.Wiring(
            ps_root_uri="10.0.0.7",
            ps_root_port=9091,
            ps_num_servers=2,
            ps_num_workers=5,
            node_host="10.0.0.8",
        ),
    )
    assert cfg.wiring.external_tier is True


def test_num_worker_only_counts_for_an_external_tier():
    assert config.load({"DMLC_NUM_WORKER": "4"}).wiring.ps_num_workers is None
    assert config.load({"DMLC_NUM_WORKER": "junk"}).wiring.ps_num_workers is None
    ext = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000"}
    assert config.load(ext).wiring.ps_num_workers is None
    assert config.load(dict(ext, DMLC_NUM_WORKER="4")).wiring.ps_num_workers == 4


def test_reads_os_environ(monkeypatch):
    monkeypatch.setenv("HVD_PS_TIMEOUT", "7")
    monkeypatch.setenv("HVD_PS_NUM_SERVERS", "2")
    cfg = config.load()
    assert (cfg.settings.timeout, cfg.settings.num_servers) == (7.0, 2)


EXT = {"DMLC_PS_ROOT_URI": "h", "DMLC_PS_ROOT_PORT": "1"}
BAD = [
    ({"HVD_PS_TIMEOUT": "soon"}, "HVD_PS_TIMEOUT"),
    ({"HVD_PS_TIMEOUT": "0"}, "HVD_PS_TIMEOUT"),
    ({"HVD_PS_TIMEOUT": "-5"}, "HVD_PS_TIMEOUT"),
    ({"HVD_PS_TIMEOUT": "nan"}, "HVD_PS_TIMEOUT"),
    ({"HVD_PS_TIMEOUT": "inf"}, "HVD_PS_TIMEOUT"),
    ({"HVD_PS_NUM_SERVERS": "0"}, "HVD_PS_NUM_SERVERS"),
    ({"HVD_PS_NUM_SERVERS": "1.5"}, "HVD_PS_NUM_SERVERS"),
    ({"HVD_PS_NUM_SERVERS": "two"}, "HVD_PS_NUM_SERVERS"),
    ({"HVD_PS_FUSION_THREADS": "-1"}, "HVD_PS_FUSION_THREADS"),
    ({"HVD_PS_FUSION_THREADS": "x"}, "HVD_PS_FUSION_THREADS"),
    ({"HVD_PS_WIRE_DTYPE": "bfloat16"}, "HVD_PS_WIRE_DTYPE"),
    ({"HVD_PS_WIRE_DTYPE": "float64"}, "HVD_PS_WIRE_DTYPE"),
    ({"HVD_PS_LOG_LEVEL": "LOUD"}, "HVD_PS_LOG_LEVEL"),
    ({"DMLC_PS_ROOT_URI": "127.0.0.1"}, "DMLC_PS_ROOT_PORT"),
    ({"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "http"}, "DMLC_PS_ROOT_PORT"),
    ({"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "0"}, "DMLC_PS_ROOT_PORT"),
    ({"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "65536"}, "DMLC_PS_ROOT_PORT"),
    ({**EXT, "DMLC_NUM_WORKER": "0"}, "DMLC_NUM_WORKER"),
    ({**EXT, "DMLC_NUM_WORKER": "x"}, "DMLC_NUM_WORKER"),
    ({"DMLC_NUM_SERVER": "0"}, "DMLC_NUM_SERVER"),
    ({"DMLC_NUM_SERVER": "many"}, "DMLC_NUM_SERVER"),
]


@pytest.mark.parametrize("env, name", BAD, ids=[f"{n}={list(e.values())[-1]}" for e, n in BAD])
def test_bad_variable_names_itself(env, name):
    with pytest.raises(ConfigError) as info:
        config.load(env)
    assert name in str(info.value)
    assert isinstance(info.value, HvdPsError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR", "critical"])
def test_log_levels(level):
    assert config.load({"HVD_PS_LOG_LEVEL": level}).settings.log_level == level.upper()


def test_ps_environment():
    env = config.ps_environment("worker", "127.0.0.1", 9000, 2, 3, "127.0.0.1")
    assert env == {
        "DMLC_ROLE": "worker",
        "DMLC_PS_ROOT_URI": "127.0.0.1",
        "DMLC_PS_ROOT_PORT": "9000",
        "DMLC_NUM_SERVER": "2",
        "DMLC_NUM_WORKER": "3",
        "DMLC_NODE_HOST": "127.0.0.1",
    }
    with pytest.raises(ConfigError, match="role='client'"):
        config.ps_environment("client", "127.0.0.1", 9000, 1, 1, "127.0.0.1")


@pytest.mark.parametrize("role", ["server", "scheduler"])
def test_defuse_and_restore_role(monkeypatch, role):
    monkeypatch.setenv("DMLC_ROLE", role)
    # setenv first, so that monkeypatch restores the variable's absence after the test
    monkeypatch.setenv("HVD_PS_SERVER_ROLE", "unset")
    monkeypatch.delenv("HVD_PS_SERVER_ROLE")
    config.defuse_stock_server()
    import os

    assert os.environ["DMLC_ROLE"] == "worker"
    assert os.environ["HVD_PS_SERVER_ROLE"] == role
    assert config.server_role() == role
    config.restore_role(role)
    assert os.environ["DMLC_ROLE"] == role


def test_worker_role_untouched(monkeypatch):
    monkeypatch.setenv("DMLC_ROLE", "worker")
    # setenv first, so that monkeypatch restores the variable's absence after the test
    monkeypatch.setenv("HVD_PS_SERVER_ROLE", "unset")
    monkeypatch.delenv("HVD_PS_SERVER_ROLE")
    config.defuse_stock_server()
    import os

    assert os.environ["DMLC_ROLE"] == "worker"
    assert "HVD_PS_SERVER_ROLE" not in os.environ
    assert config.server_role() is None


def test_bucket_mb():
    assert config.load({}).settings.bucket_mb == 4.0
    assert config.load({"HVD_PS_BUCKET_MB": "0"}).settings.bucket_mb == 0.0
    assert config.load({"HVD_PS_BUCKET_MB": "2.5"}).settings.bucket_mb == 2.5
    with pytest.raises(ConfigError, match="HVD_PS_BUCKET_MB"):
        config.load({"HVD_PS_BUCKET_MB": "-1"})
    with pytest.raises(ConfigError, match="HVD_PS_BUCKET_MB"):
        config.load({"HVD_PS_BUCKET_MB": "lots"})


# -- the other reads and writes of the process's environment -----------------------------------


def _unset(monkeypatch, *names: str) -> None:
    """Remove ``names`` from os.environ for the test (set first, so monkeypatch restores the
    absence of those that were not set)."""
    for name in names:
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


def test_set_worker_environment_and_node_host(monkeypatch):
    import os

    names = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER")
    _unset(monkeypatch, *names, "DMLC_NUM_WORKER", "DMLC_NODE_HOST")
    config.set_worker_environment("10.0.0.1", 9100, 2, 5, "10.0.0.9")
    got = {k: v for k, v in os.environ.items() if k.startswith("DMLC_")}
    assert got == config.ps_environment("worker", "10.0.0.1", 9100, 2, 5, "10.0.0.9")
    config.set_node_host("10.0.0.8")
    assert os.environ["DMLC_NODE_HOST"] == "10.0.0.8"


@pytest.mark.parametrize("timeout, check, shutdown", [(300.0, "75", "300"), (2.5, "1", "2")])
def test_limit_horovod_stalls(monkeypatch, timeout, check, shutdown):
    import os

    _unset(monkeypatch, "HOROVOD_STALL_CHECK_TIME_SECONDS", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS")
    config.limit_horovod_stalls(timeout)
    assert os.environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] == check
    assert os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == shutdown
    monkeypatch.setenv("HOROVOD_STALL_CHECK_TIME_SECONDS", "11")  # the user's value stays
    config.limit_horovod_stalls(1000.0)
    assert os.environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] == "11"
    assert os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == shutdown


def test_local_server_environment(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("HOROVOD_RANK", "3")
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("HVD_PS_SERVER_ROLE", "server")
    monkeypatch.setenv("MY_SETTING", "kept")
    _unset(monkeypatch, "OMP_NUM_THREADS")
    ps = config.ps_environment("server", "127.0.0.1", 9000, 1, 2, "127.0.0.1")
    env = config.local_server_environment({**ps, "DMLC_NUM_SERVER": "3"})
    assert {k: env[k] for k in ps} == {**ps, "DMLC_NUM_SERVER": "3"}
    assert env["MY_SETTING"] == "kept" and env["OMP_NUM_THREADS"] == "1"
    for name in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMI_RANK", "HVD_PS_SERVER_ROLE"):
        assert name not in env
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert config.local_server_environment(ps)["OMP_NUM_THREADS"] == "4"


def test_remote_server_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/src")
    monkeypatch.setenv("MY_SETTING", "not sent")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # this host's, not the remote one's
    _unset(monkeypatch, "HVD_PS_LOG_LEVEL")
    ps = config.ps_environment("server", "10.0.0.1", 9000, 2, 2, "10.0.0.2")
    assert config.remote_server_environment(ps) == {
        **ps,
        "PYTHONPATH": "/src",
        "OMP_NUM_THREADS": "1",
    }
    monkeypatch.setenv("HVD_PS_LOG_LEVEL", "DEBUG")
    assert config.remote_server_environment(ps)["HVD_PS_LOG_LEVEL"] == "DEBUG"


def test_job_environment_drops_an_outer_launch(monkeypatch):
    outer = {
        "DMLC_ROLE": "worker",
        "DMLC_PS_ROOT_URI": "10.9.9.9",
        "DMLC_PS_ROOT_PORT": "1",
        "DMLC_NUM_SERVER": "2",
        "DMLC_NUM_WORKER": "2",
        "HVD_PS_LAUNCHER": "10.9.9.9:5",
        "HVD_PS_SECRET_FILE": "/tmp/their-secret",
        "HVD_PS_GROUP_SIZE": "2",
        "HVD_PS_NUM_GROUPS": "2",
        "HVD_PS_GROUP_OFFSET": "1",
        "HVD_PS_TOTAL_GROUPS": "3",
    }
    for k, v in outer.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DMLC_INTERFACE", "eth1")
    monkeypatch.setenv("HVD_PS_TIMEOUT", "9")
    env = config.job_environment()
    assert not set(outer) & set(env)
    assert env["DMLC_INTERFACE"] == "eth1" and env["HVD_PS_TIMEOUT"] == "9"
