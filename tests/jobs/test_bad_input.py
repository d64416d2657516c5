"""The bad-input matrix, plain pytest: the cases that need no ranks, and whole jobs.

Every case is a row: the bad input, the exact exception class, and a regular expression on
the message that includes what the user should do. In-process rows call the function that
checks the input (the environment, the strategies, the layout, the job's place on a shared
tier, the grouping hvdps-run was told, the checkpoint file, the scheduler's port). Job rows run
``tests/jobs/programs/bad_input_job.py`` under ``mpirun`` through tests/job_run.py (its own
session, a marker every process inherits: nothing may be left, checked by PID) with
HVD_PS_TIMEOUT=20 and a hard ``timeout``, and must end non-zero with one ``hvd_ps: <Class>:
...`` line, well before a wait could have timed out. The cases that need ranks inside one MPI
session are in tests/mpi/test_bad_input_ranks.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict

import job_run  # tests/job_run.py
import numpy as np
import pytest

import hvd_ps
from hvd_ps import checkpoint, config, errors, topology
from hvd_ps.launch import rendezvous, spawn
from hvd_ps.ps import placement

# HVD_PS_TIMEOUT of the jobs: a 4-rank job ends in 15-18 s on 2 quiet cores and took 21.5 s in a
# loaded CI run, so a wait that ran into it (>= 45 s) stands apart from a slow start
TIMEOUT = 45
EXTERNAL = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000", "DMLC_NUM_SERVER": "1"}


def _env(**env: str) -> Callable[[Path], Any]:
    return lambda tmp: config.load(env)


def _strategy(make: Callable[[], Any]) -> Callable[[Path], Any]:
    return lambda tmp: make()


def _layout(world: int, **kw: Any) -> Callable[[Path], Any]:
    return lambda tmp: topology.plan(world, **kw)


def _place(env: Dict[str, str], groups: int, **kw: Any) -> Callable[[Path], Any]:
    return lambda tmp: placement.resolve(config.load(env), groups, **kw)


def _told(env: Dict[str, str], groups: list) -> Callable[[Path], Any]:
    """rendezvous.check: the grouping hvdps-run was told against the script's."""
    world = sum(len(g) for g in groups)
    topo = topology.Topology(groups, 0, 0, None, None, hosts=["h"] * world)
    return lambda tmp: rendezvous.check(config.load(env), topo)


def _port_in_use(tmp: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        spawn.start(1, 1, port=s.getsockname()[1], timeout=10)


def _saved(tmp: Path, value: float = 0.0) -> str:
    path = str(tmp / "ckpt.hvdps")
    ps = np.arange(6, dtype=np.float32) + value
    checkpoint.write(path, {"ps/0": ps}, {"strategy": "EASGD"})
    return path


def _ckpt(damage: Callable[[str], None]) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        path = _saved(tmp)
        damage(path)
        return checkpoint.read(path)

    return run


def _shard(path: str) -> str:
    """The (one) shard of the checkpoint ``path``."""
    (shard,) = checkpoint.read_manifest(path)["shards"]
    return os.path.join(os.path.dirname(path), shard["name"])


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    at = data.index(np.arange(6, dtype=np.float32).tobytes()) + 5
    data[at] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def _rewrite(manifest: Any = None, members: Dict[str, bytes] = None) -> Callable[[str], None]:
    """Replace the manifest by a zip of ``members`` and (unless None) ``manifest``."""

    def damage(path: str) -> None:
        with zipfile.ZipFile(path, "w") as zf:
            for name, body in (members or {}).items():
                zf.writestr(name, body)
            if manifest is not None:
                zf.writestr(checkpoint.MANIFEST, json.dumps(manifest))

    return damage


def _edit(change: Callable[[Dict[str, Any]], None]) -> Callable[[str], None]:
    """Rewrite the manifest (a valid zip) after ``change`` to its JSON."""

    def damage(path: str) -> None:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(checkpoint.MANIFEST))
        change(manifest)
        _rewrite(manifest)(path)

    return damage


def _drop_member(path: str) -> None:
    """The shard without its array, the manifest told the new size (so only the arrays
    differ)."""
    shard = _shard(path)
    with zipfile.ZipFile(shard, "w") as zf:
        zf.writestr("other.npy", b"")
    _edit(lambda m: m["shards"][0].update(bytes=os.path.getsize(shard)))(path)


def _other_shard(path: str) -> None:
    """The shard replaced by the shard of another checkpoint of the same shape."""
    other = Path(path).parent / "other"
    other.mkdir()
    os.replace(_shard(_saved(other, 1.0)), _shard(path))


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def _manifest(version: int = 2, fmt: str = checkpoint.FORMAT) -> Dict[str, Any]:
    return {"format": fmt, "version": version, "meta": {}, "shards": []}


def _set_shape(m: Dict[str, Any]) -> None:
    m["shards"][0]["arrays"]["ps/0"]["shape"] = [7]


ONE = {"ps/0.npy": _npy(np.arange(6, dtype=np.float32))}
SETTING = "resume with the same setting or start from another checkpoint"

#: (name, bad input (given a temporary directory), exact class, what the message must say)
CASES = [
    # environment values
    ("env-timeout-not-a-number", _env(HVD_PS_TIMEOUT="soon"), "ConfigError",
     r"HVD_PS_TIMEOUT='soon' is not a valid float: set a number >= 0.1, or unset it"),
    ("env-timeout-nan", _env(HVD_PS_TIMEOUT="nan"), "ConfigError",
     r"HVD_PS_TIMEOUT='nan' must be a finite number: set a number >= 0.1, or unset it"),
    ("env-no-servers", _env(HVD_PS_NUM_SERVERS="0"), "ConfigError",
     r"HVD_PS_NUM_SERVERS='0' must be >= 1: set an int >= 1, or unset it"),
    ("env-wire-dtype", _env(HVD_PS_WIRE_DTYPE="int3"), "ConfigError",
     r"HVD_PS_WIRE_DTYPE='int3' must be one of float32, float16, int8, int4"),
    ("env-log-level", _env(HVD_PS_LOG_LEVEL="LOUD"), "ConfigError",
     r"HVD_PS_LOG_LEVEL='LOUD' is not a logging level \(e.g. INFO\)"),
    ("env-uri-without-port", _env(DMLC_PS_ROOT_URI="127.0.0.1"), "ConfigError",
     r"DMLC_PS_ROOT_URI is set but DMLC_PS_ROOT_PORT is not: set both .* or neither"),
    ("env-port-out-of-range", _env(DMLC_PS_ROOT_URI="h", DMLC_PS_ROOT_PORT="70000"),
     "ConfigError", r"DMLC_PS_ROOT_PORT=70000 is not a TCP port: set one of 1..65535"),
    ("env-launcher", _env(HVD_PS_LAUNCHER="nohost"), "ConfigError",
     r"HVD_PS_LAUNCHER='nohost' must be host:port \(it is set by hvdps-run\)"),
    ("env-group-offset", _env(HVD_PS_GROUP_OFFSET="-1"), "ConfigError",
     r"HVD_PS_GROUP_OFFSET='-1' must be >= 0: set an int >= 0, or unset it"),
    # strategy arguments
    ("strategy-period", _strategy(lambda: hvd_ps.EASGD(period=0)), "ConfigError",
     r"period must be an integer >= 1, got 0"),
    ("strategy-mode", _strategy(lambda: hvd_ps.GradientPush(mode="lazy")), "ConfigError",
     r"mode must be one of sync, async, got 'lazy'"),
    ("strategy-overlap", _strategy(lambda: hvd_ps.ModelAverage(period=2, overlap=2)),
     "ConfigError", r"overlap must be an integer with 0 <= overlap < period \(2\), got 2"),
    ("strategy-alpha", _strategy(lambda: hvd_ps.EASGD(period=2, alpha=1.5)), "ConfigError",
     r"alpha must be a number in \(0, 1\), got 1.5"),
    ("strategy-unstable-easgd",
     _strategy(lambda: hvd_ps.EASGD(period=2, alpha=0.6, mode="sync").validate(2)),
     "ConfigError", r"unstable in sync mode; use alpha < 0.5 \(0.9/G = 0.45 is typical\)"),
    ("strategy-momentum", _strategy(lambda: hvd_ps.DiLoCo(period=2, momentum=1.0)),
     "ConfigError", r"momentum must be a number in \[0, 1\), got 1.0"),
    # init arguments: the layout
    ("init-group-size-does-not-divide", _layout(4, group_size=3), "TopologyError",
     r"group_size=3 does not divide the world size 4: pass a group_size that divides it"),
    ("init-rank-twice", _layout(4, groups=[[0, 1], [1, 2, 3]]), "TopologyError",
     r"rank 1 is in groups\[0\] and groups\[1\]: put every rank in exactly one group"),
    ("init-rank-missing", _layout(4, groups=[[0, 1]]), "TopologyError",
     r"ranks \[2, 3\] are in no group \(groups must cover every rank\)"),
    ("init-both-groupings", _layout(2, groups=[[0, 1]], group_size=2), "TopologyError",
     r"pass either group_size or groups to hvd_ps.init, not both"),
    ("init-empty-group", _layout(2, groups=[[0, 1], []]), "TopologyError",
     r"groups\[1\] is empty: put every rank in exactly one group"),
    ("init-group-offset", _place(EXTERNAL, 1, group_offset=-1), "ConfigError",
     r"group_offset must be an integer >= 0, got -1"),
    # a job whose group count disagrees with the tier's; a tier of other jobs
    ("groups-beyond-the-tier", _place({**EXTERNAL, "DMLC_NUM_WORKER": "1"}, 2),
     "TopologyError", r"do not fit in total_groups=1 .*: lower HVD_PS_GROUP_OFFSET or raise"),
    ("tier-of-other-jobs", _place({**EXTERNAL, "DMLC_NUM_WORKER": "2"}, 1), "ConfigError",
     r"several jobs share it, so tell each job the global id of its first group, e.g. "
     r"HVD_PS_GROUP_OFFSET=0"),
    ("total-without-shared-tier", _place({}, 1, total_groups=2), "ConfigError",
     r"several jobs share a tier started with 'hvdps-run --servers-only'"),
    ("num-groups-told-to-hvdps-run", _told({"HVD_PS_NUM_GROUPS": "3"}, [[0], [1]]),
     "TierError", r"expects 3 leaders .* this job's hvd_ps.init makes 2 groups: drop "
     r"--num-groups .* or make it match"),
    ("group-size-told-to-hvdps-run", _told({"HVD_PS_GROUP_SIZE": "1"}, [[0, 1]]),
     "ConfigError", r"give the grouping once, either in the script or to hvdps-run"),
    # a port in use
    ("port-in-use", _port_in_use, "TierError",
     r"port \d+ on 127.0.0.1 is in use: cannot start the scheduler; pick another port"),
    # corrupt checkpoints
    ("checkpoint-missing", lambda tmp: checkpoint.read(str(tmp / "nothing.hvdps")),
     "CheckpointError", r"no checkpoint at .*nothing.hvdps: check the path"),
    ("checkpoint-torn", _ckpt(_truncate), "CheckpointError",
     r"is torn or corrupt: .*; start from another checkpoint"),
    ("checkpoint-flipped-byte", _ckpt(lambda p: _flip(_shard(p))), "CheckpointError",
     r"shard ckpt.hvdps.all.[0-9a-f]{16}.npz of .* is torn or corrupt: .*CRC.*; start from "
     r"another checkpoint"),
    ("checkpoint-not-a-zip", _ckpt(lambda p: Path(p).write_bytes(b"hello")), "CheckpointError",
     r"is torn or corrupt: .*; start from another checkpoint"),
    ("checkpoint-no-manifest", _ckpt(_rewrite(None, ONE)), "CheckpointError",
     r"is not an hvd_ps checkpoint \(it has no manifest.json\)"),
    ("checkpoint-foreign-manifest", _ckpt(_rewrite(_manifest(fmt="other"), ONE)),
     "CheckpointError", r"is not an hvd_ps checkpoint \(foreign manifest\)"),
    ("checkpoint-other-version", _ckpt(_rewrite(_manifest(version=1), ONE)), "CheckpointError",
     r"is a version 1 checkpoint; this hvd_ps reads version 2"),
    ("checkpoint-shard-missing", _ckpt(lambda p: os.unlink(_shard(p))), "CheckpointError",
     r"shard ckpt.hvdps.all.[0-9a-f]{16}.npz of .* is missing: a checkpoint is its manifest "
     r"and every shard it lists, in one directory; copy them together or start from another "
     r"checkpoint"),
    ("checkpoint-shard-torn", _ckpt(lambda p: _truncate(_shard(p))), "CheckpointError",
     r"shard .* is \d+ bytes, its manifest says \d+: it is torn or was replaced; start from "
     r"another checkpoint"),
    ("checkpoint-shard-of-another-checkpoint", _ckpt(_other_shard), "CheckpointError",
     r"array 'ps/0' has CRC-32 \d+, the manifest says \d+: the shard is from another "
     r"checkpoint"),
    ("checkpoint-member-missing", _ckpt(_drop_member), "CheckpointError",
     r"arrays do not match the manifest \(missing \['ps/0'\], unlisted \['other'\]\); the "
     r"shard was altered or is from another checkpoint"),
    ("checkpoint-shape-altered", _ckpt(_edit(_set_shape)), "CheckpointError",
     r"array 'ps/0' is <f4\[6\], the manifest says <f4\[7\]; the checkpoint was altered"),
    ("checkpoint-of-another-setup",
     lambda tmp: checkpoint.expect(_saved(tmp), checkpoint.read(_saved(tmp))[1], "strategy",
                                   "DiLoCo"),
     "CheckpointError", rf"saved with strategy = 'EASGD', this job has 'DiLoCo'; {SETTING}"),
]  # fmt: skip


@pytest.mark.parametrize("name, bad, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused(tmp_path, monkeypatch, name, bad, error, match):
    monkeypatch.setenv("PYTHONPATH", str(job_run.ROOT))  # spawn.start's children
    started = time.monotonic()
    with pytest.raises(errors.HvdPsError) as info:
        bad(tmp_path)
    assert type(info.value) is getattr(errors, error), f"{type(info.value)}: {info.value}"
    assert re.search(match, str(info.value)), str(info.value)
    assert time.monotonic() - started < 5  # refused at once, nothing waited


# -- whole jobs -------------------------------------------------------------------------------


def _closed_port() -> str:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


#: (case, ranks, extra environment, exact class, the one line's message)
JOBS = [
    ("hvd-init-first", 2, {}, "ConfigError",
     r"hvd.init\(\) was called before hvd_ps.init\(\): delete that hvd.init\(\) line .* or "
     r"call hvd.init\(process_sets='dynamic'\) there instead"),
    ("bad-layout", 2, {}, "TopologyError",
     r"group_size=3 does not divide the world size 2: pass a group_size that divides it"),
    ("unreachable-tier", 2,
     {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "", "DMLC_NUM_SERVER": "1"},
     "TierError", r"no PS scheduler accepts connections at 127.0.0.1:\d+ .*: start the tier "
     r"first .*, fix the address, or unset DMLC_PS_ROOT_URI"),
    ("nan-one-group", 4, {}, "NonFiniteError",
     r"group 1 \(leader rank 2\), step 2: the parameters to push to the PS tier hold\(s\) NaN "
     r"or inf in parameter\(s\) .*'job_weight' \(NaN\).*; nothing was pushed: lower the "
     r"learning rate, clip the gradients .* or check the input data for NaN/inf"),
    # the script's own arguments, alike on every rank: one line per job, before init too
    ("strategy-typo-before-init", 4, {}, "ConfigError",
     r"EASGD has no argument 'peroid': did you mean 'period'\? \(its arguments: period, "),
    ("strategy-mode", 4, {}, "ConfigError",
     r"mode must be one of sync, got 'async': ModelAverage has no async mode; GradientPush, "
     r"EASGD and DiLoCo have one"),
    ("trainer-argument", 4, {}, "ConfigError",
     r"wire must be one of float32, float16, int8, int4, got 'int16'"),
    # evaluating on rank 0 alone: named within seconds, not at HVD_PS_TIMEOUT
    ("evaluate-on-rank-0", 4, {}, "HvdPsError",
     r"trainer.global_model\(\) is collective, but not every rank called it: ranks \[0\] "
     r"wait in trainer.global_model\(\); ranks \[1\] wait in trainer.step\(\); call it on "
     r"every rank of the group, or evaluate on one leader alone with 'with "
     r"trainer.global_model\(local=True\):'"),
]  # fmt: skip


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")
@pytest.mark.parametrize("case, ranks, extra, error, match", JOBS, ids=[j[0] for j in JOBS])
def test_bad_input_ends_the_job_with_one_line(case, ranks, extra, error, match):
    extra = dict(extra)
    if "DMLC_PS_ROOT_PORT" in extra:
        extra["DMLC_PS_ROOT_PORT"] = _closed_port()
    env = job_run.env(HVD_PS_TIMEOUT=str(TIMEOUT), **extra)
    cmd = job_run.bounded(job_run.mpirun(ranks, *job_run.program("bad_input_job.py", case)), 90)
    started = time.monotonic()
    job = job_run.run(cmd, env, timeout=100)  # fails the test if any process is left
    took = time.monotonic() - started
    out = job.stdout + job.stderr
    assert job.returncode != 0, out[-3000:]
    assert "NOT REFUSED" not in out
    lines = re.findall(r"hvd_ps: (\w+): (.*)$", out, re.M)
    assert len(lines) == 1, out[-3000:]  # one line per job
    assert lines[0][0] == error, lines
    assert re.search(match, lines[0][1]), lines[0][1]
    assert "Traceback" not in out, out[-3000:]
    assert took < TIMEOUT, f"{case} took {took:.1f} s: a wait ran into HVD_PS_TIMEOUT"
