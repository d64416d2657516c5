"""Several jobs, one tier: each job's place among the groups, and the strategies' total G.

In process (fast): :func:`hvd_ps.ps.placement.resolve` reads ``group_offset`` / ``total_groups``
from ``hvd_ps.init``'s arguments and the environment and refuses what cannot work.

Real jobs on loopback: two ``horovodrun -np 1`` jobs of one group each
(``HVD_PS_GROUP_OFFSET`` 0 and 1) against one ``hvdps-run --servers-only --num-workers 2``
tier train every sync strategy (tests/jobs/programs/shared_tier_job.py); step by step they must
equal, to 1e-5, the one-job run of two groups (``horovodrun -np 2``, groups ``[[0], [1]]``, its own
tier) on the same data, and both must equal the numpy reference of two groups
(tests/reference.py). With an int8 wire, the two jobs equal the one-job run bit for bit.
Then the refusals: two jobs claiming the same group id, and two jobs
counting different totals, each fail in ``hvd_ps.init`` with a TopologyError naming the
problem on both jobs; a job that gives no offset on a shared tier fails before connecting.
Every process is bounded by ``timeout`` and checked gone by PID afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import job_run  # tests/job_run.py
import numpy as np
import pytest
import reference as ref  # noqa: E402

from hvd_ps import config
from hvd_ps.errors import ConfigError, TopologyError
from hvd_ps.ps import placement

TOL = 1e-5
#: a compressed wire against the float64 reference (relative to each array's largest value)
WIRE_TOL = {"int8": 1.5e-2}  # 7.0e-3 measured
LR = 0.1
#: as in the job: (reference spec, steps)
SPECS = {
    "GradientPush": ({"name": "GradientPush"}, 4),
    "ModelAverage": ({"name": "ModelAverage", "period": 2}, 8),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.9 / 2}, 8),  # the default 0.9 / G
    "DiLoCo": (
        {"name": "DiLoCo", "period": 3, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True},
        9,
    ),
}

# -- resolve(): in process --------------------------------------------------------------------

EXTERNAL = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000", "DMLC_NUM_SERVER": "1"}


def _resolve(env: Dict[str, str], num_groups: int, **kw) -> placement.Placement:
    return placement.resolve(config.load(env), num_groups, **kw)


@pytest.mark.parametrize(
    "env, groups, kw, want",
    [
        ({}, 2, {}, (0, 2, False)),  # a job alone with its embedded tier
        ({**EXTERNAL, "DMLC_NUM_WORKER": "2"}, 2, {}, (0, 2, False)),  # hvdps-run job mode
        ({**EXTERNAL, "DMLC_NUM_WORKER": "2", "HVD_PS_GROUP_OFFSET": "1"}, 1, {}, (1, 2, True)),
        ({**EXTERNAL, "DMLC_NUM_WORKER": "3"}, 1, {"group_offset": 2}, (2, 3, True)),
        (
            {**EXTERNAL, "DMLC_NUM_WORKER": "4", "HVD_PS_TOTAL_GROUPS": "4"},
            2,
            {"group_offset": 2},
            (2, 4, True),
        ),
        # a total that disagrees with the tier's: shared, so the leaders' claims refuse it
        ({**EXTERNAL, "DMLC_NUM_WORKER": "2"}, 1, {"total_groups": 1}, (0, 1, True)),
        ({**EXTERNAL}, 1, {"group_offset": 1, "total_groups": 2}, (1, 2, True)),
    ],
)
def test_resolve(env, groups, kw, want):
    got = _resolve(env, groups, **kw)
    assert (got.offset, got.total, got.shared) == want


@pytest.mark.parametrize(
    "env, groups, kw, error, words",
    [
        # the case: a job of 1 group on a tier of 2 that says nothing
        ({**EXTERNAL, "DMLC_NUM_WORKER": "2"}, 1, {}, ConfigError, "HVD_PS_GROUP_OFFSET=1"),
        ({**EXTERNAL, "HVD_PS_TOTAL_GROUPS": "3"}, 2, {}, ConfigError, "HVD_PS_GROUP_OFFSET"),
        ({**EXTERNAL, "DMLC_NUM_WORKER": "2"}, 1, {"group_offset": 2}, TopologyError, "ids 0..1"),
        ({**EXTERNAL, "DMLC_NUM_WORKER": "3"}, 2, {"group_offset": 2}, TopologyError, "2..3"),
        ({}, 1, {"total_groups": 2}, ConfigError, "hvdps-run --servers-only"),
        ({}, 1, {"group_offset": 1}, ConfigError, "a PS tier of its own"),
        ({"HVD_PS_GROUP_OFFSET": "1"}, 2, {}, ConfigError, "a PS tier of its own"),
        (EXTERNAL, 1, {"group_offset": -1}, ConfigError, "group_offset must be an integer >= 0"),
        (EXTERNAL, 1, {"group_offset": True}, ConfigError, "group_offset must be an integer"),
        (EXTERNAL, 1, {"total_groups": 0}, ConfigError, "total_groups must be an integer >= 1"),
        (EXTERNAL, 1, {"total_groups": 2.0}, ConfigError, "total_groups must be an integer"),
        (
            {**EXTERNAL, "HVD_PS_GROUP_OFFSET": "1"},
            1,
            {"group_offset": 0},
            ConfigError,
            "contradicts HVD_PS_GROUP_OFFSET=1: give it once",
        ),
        (
            {**EXTERNAL, "HVD_PS_TOTAL_GROUPS": "2"},
            1,
            {"group_offset": 0, "total_groups": 3},
            ConfigError,
            "contradicts HVD_PS_TOTAL_GROUPS=2",
        ),
    ],
)
def test_resolve_refuses(env, groups, kw, error, words):
    with pytest.raises(error) as info:
        _resolve(env, groups, **kw)
    assert words in str(info.value)
    assert info.value.every_rank  # every rank computes it alike: one line per job


@pytest.mark.parametrize(
    "env, name",
    [({"HVD_PS_GROUP_OFFSET": "-1"}, "HVD_PS_GROUP_OFFSET"),
     ({"HVD_PS_GROUP_OFFSET": "one"}, "HVD_PS_GROUP_OFFSET"),
     ({"HVD_PS_TOTAL_GROUPS": "0"}, "HVD_PS_TOTAL_GROUPS"),
     ({"HVD_PS_TOTAL_GROUPS": "2.5"}, "HVD_PS_TOTAL_GROUPS")],
)  # fmt: skip
def test_bad_environment_names_itself(env, name):
    with pytest.raises(ConfigError, match=name):
        config.load(env)


def test_environment_is_read():
    cfg = config.load({"HVD_PS_GROUP_OFFSET": "0", "HVD_PS_TOTAL_GROUPS": "3"})
    assert (cfg.wiring.group_offset, cfg.wiring.total_groups) == (0, 3)
    assert (config.load({}).wiring.group_offset, config.load({}).wiring.total_groups) == (
        None,
        None,
    )


# -- real jobs ----------------------------------------------------------------------------------


def _env(**extra: str) -> Dict[str, str]:
    return job_run.env(**{"HVD_PS_TIMEOUT": "30", **extra})


def _job(out: Path, np_: int, limit: int = 150, groups: Optional[str] = None, **env: str):
    cmd = ["horovodrun", "-np", str(np_), *job_run.program("shared_tier_job.py", str(out))]
    cmd += ["--groups", groups] if groups else []
    return job_run.start(job_run.bounded(cmd, limit), _env(**env))


def _load(out: Path, total: int) -> List[Dict[str, np.ndarray]]:
    return [dict(np.load(out / f"group{g}.npz")) for g in range(total)]


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    scale = max(float(np.max(np.abs(want))), 1e-3)
    err = float(np.max(np.abs(got - want))) / scale
    assert err < TOL, f"{what}: relative error {err:.2e} (tolerance {TOL:g})"


@pytest.fixture(scope="module")
def one_job(tmp_path_factory) -> List[Dict[str, np.ndarray]]:
    """The one-job run of two groups ([[0], [1]], its own embedded tier)."""
    out = tmp_path_factory.mktemp("one_job")
    ((code, so, se),) = job_run.finish_all([_job(out, 2, groups="[[0],[1]]")], 170)
    assert code == 0, so + se[-3000:]
    assert "group 0 of 2 (job: 0 of 2)" in so and "group 1 of 2 (job: 1 of 2)" in so, so
    job_run.assert_gone([], token=str(out))
    return _load(out, 2)


def _two_jobs(tmp_path: Path, **env: str) -> List[Dict[str, np.ndarray]]:
    """Two one-group jobs on one ``--servers-only`` tier (``env`` added to each job's)."""
    tier = job_run.Tier(tmp_path, 2)
    assert tier.exports["HVD_PS_TOTAL_GROUPS"] == "2"
    assert tier.exports["DMLC_NUM_WORKER"] == "2"
    try:
        jobs = [
            _job(tmp_path, 1, HVD_PS_GROUP_OFFSET=str(i), **tier.exports, **env) for i in (0, 1)
        ]
        results = job_run.finish_all(jobs, 170)
        for i, (code, so, se) in enumerate(results):
            assert code == 0, so + se[-3000:]
            assert f"group {i} of 2 (job: 0 of 1)" in so, so
        tier.proc.communicate(timeout=30)  # the servers finish once both leaders have left
        assert tier.proc.returncode == 0
    finally:
        code = tier.stop()
    assert code == 0
    job_run.assert_gone([], token=str(tmp_path))
    return _load(tmp_path, 2)


def test_two_jobs_on_one_tier_equal_the_one_job_run(tmp_path: Path, one_job) -> None:
    two_jobs = _two_jobs(tmp_path)
    groups = [[0], [1]]
    for name, (spec, steps) in SPECS.items():
        want = ref.run(spec, groups, steps, LR)
        for g in range(2):
            for what, got in (("two jobs", two_jobs[g]), ("one job", one_job[g])):
                assert got[f"{name}.w"].shape[0] == steps
                for t in range(steps):
                    where = f"{name} group {g} step {t + 1} ({what})"
                    _close(got[f"{name}.w"][t], want[t]["x"][g][0], f"{where} weight vs numpy")
                    _close(got[f"{name}.b"][t], want[t]["x"][g][1], f"{where} bias vs numpy")
                _close(got[f"{name}.gw"], want[-1]["global"][0], f"{name} global ({what})")
                _close(got[f"{name}.gb"], want[-1]["global"][1], f"{name} global ({what})")
            for key in ("w", "b", "gw", "gb"):
                _close(two_jobs[g][f"{name}.{key}"], one_job[g][f"{name}.{key}"],
                       f"{name} {key} group {g}: two jobs vs one job")  # fmt: skip
        assert float(two_jobs[0]["EASGD.alpha"]) == pytest.approx(0.45)  # 0.9 / G, G = 2


@pytest.mark.parametrize("wire", ["int8"])
def test_two_jobs_on_one_tier_with_a_compressed_wire_equal_the_one_job_run(
    tmp_path: Path, wire: str
) -> None:
    """The compressed wire's keys (state, wire and rejoin keys per shard) of two jobs on one
    tier: every step, every strategy, bit for bit the one-job run of two groups, and near the
    float64 reference (what the codes round off, error feedback keeps bounded)."""
    one = tmp_path / "one"
    one.mkdir()
    ((code, so, se),) = job_run.finish_all(
        [_job(one, 2, groups="[[0],[1]]", HVD_PS_WIRE_DTYPE=wire)], 170
    )
    assert code == 0, so + se[-3000:]
    one_job = _load(one, 2)
    two_jobs = _two_jobs(tmp_path, HVD_PS_WIRE_DTYPE=wire)
    worst = 0.0
    for name, (spec, steps) in SPECS.items():
        want = ref.run(spec, [[0], [1]], steps, LR)
        for g in range(2):
            for key in ("w", "b", "gw", "gb"):
                np.testing.assert_array_equal(
                    two_jobs[g][f"{name}.{key}"], one_job[g][f"{name}.{key}"],
                    err_msg=f"{name} {key} group {g}: two jobs vs one job",
                )  # fmt: skip
            for t in range(steps):
                for got, exact in (
                    (two_jobs[g][f"{name}.w"][t], want[t]["x"][g][0]),
                    (two_jobs[g][f"{name}.b"][t], want[t]["x"][g][1]),
                ):
                    scale = max(float(np.max(np.abs(exact))), 1e-3)
                    worst = max(worst, float(np.max(np.abs(got - exact))) / scale)
    assert worst < WIRE_TOL[wire], f"{wire}: relative error {worst:.2e} against float64"


def _refused(tmp_path: Path, envs: List[Dict[str, str]]) -> List[str]:
    """Run one 1-rank job per entry of ``envs`` on a 2-group tier; each must fail in init."""
    tier = job_run.Tier(tmp_path, 2)
    start = time.monotonic()
    try:
        jobs = [_job(tmp_path, 1, limit=90, **{**tier.exports, **env}) for env in envs]
        results = job_run.finish_all(jobs, 100)
    finally:
        tier.stop()
    took = time.monotonic() - start
    assert took < 60, f"the refusals took {took:.0f} s (HVD_PS_TIMEOUT is 30 s)"
    job_run.assert_gone([], token=str(tmp_path))
    assert not list(tmp_path.glob("group*.npz")), "a refused job trained"
    for code, so, se in results:
        assert code != 0, so + se[-3000:]
        assert "Traceback" not in se, se[-3000:]  # one clean line
    return [se for _, _, se in results]


def test_the_same_group_id_twice_is_refused_on_both_jobs(tmp_path: Path) -> None:
    errs = _refused(tmp_path, [{"HVD_PS_GROUP_OFFSET": "0"}, {"HVD_PS_GROUP_OFFSET": "0"}])
    for se in errs:
        assert (
            "hvd_ps: TopologyError: global group id(s) [0] are claimed by more than one "
            "leader of the PS tier at 127.0.0.1:"
        ) in se, se[-3000:]
        assert "(and [1] by none); this job's groups are 0..0: give each job its own " in se
        assert "HVD_PS_GROUP_OFFSET" in se


def test_totals_that_disagree_are_refused_on_both_jobs(tmp_path: Path) -> None:
    errs = _refused(
        tmp_path,
        [{"HVD_PS_GROUP_OFFSET": "0"}, {"HVD_PS_GROUP_OFFSET": "1", "HVD_PS_TOTAL_GROUPS": "3"}],
    )
    assert (
        "hvd_ps: TopologyError: 1 leader(s) of other jobs on the PS tier at 127.0.0.1:"
    ) in errs[0], errs[0][-3000:]
    assert "count another total than its 2 groups (HVD_PS_TOTAL_GROUPS)" in errs[0]
    assert (
        "hvd_ps: TopologyError: this job says there are 3 groups in all (HVD_PS_TOTAL_GROUPS"
    ) in errs[1], errs[1][-3000:]
    assert "but 2 leaders joined the PS tier" in errs[1]
    assert "give every job the tier's count (its --num-workers, 2)" in errs[1]


def test_a_job_without_its_offset_on_a_shared_tier_fails_before_connecting(
    tmp_path: Path,
) -> None:
    (se,) = _refused(tmp_path, [{}])
    assert "hvd_ps: ConfigError: the PS tier serves 2 groups in all" in se, se[-3000:]
    assert "HVD_PS_GROUP_OFFSET=0 for the first job and HVD_PS_GROUP_OFFSET=1" in se


def test_servers_only_prints_the_total_and_asks_for_the_offset(tmp_path: Path) -> None:
    tier = job_run.Tier(tmp_path, 3)
    try:
        assert tier.exports["HVD_PS_TOTAL_GROUPS"] == "3"
        assert tier.exports["DMLC_NUM_WORKER"] == "3"
    finally:
        assert tier.stop() == 0


#: docs/security.md: a secret file of one's own (run as written, in the test's directory)
MAKE_SECRET = (
    "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > tier.secret && chmod 600 tier.secret"
)


def test_a_tier_with_its_own_secret_file_admits_only_jobs_that_hold_it(tmp_path: Path) -> None:
    """``--secret-file``: a file others may read stops hvdps-run before it starts anything; the
    tier prints the file's path; a job holding another secret fails in ``hvd_ps.init`` with one
    line naming HVD_PS_SECRET_FILE, before it registers with ps-lite, so the job holding the
    right one then trains on the tier as usual and the tier ends with 0."""
    subprocess.run(["bash", "-c", MAKE_SECRET], cwd=tmp_path, check=True, timeout=30)
    path = tmp_path / "tier.secret"
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text()) == 64
    loose = tmp_path / "loose.secret"
    loose.write_text(path.read_text())
    loose.chmod(0o644)
    cmd = job_run.launcher("--servers-only", "--num-workers", "1", "--secret-file", str(loose))
    proc = job_run.complete(job_run.bounded(cmd, 30), job_run.env(), timeout=40)
    assert proc.returncode == 2 and f"chmod 600 {loose}" in proc.stderr, proc.stderr
    other = tmp_path / "other.secret"
    other.write_text("f" * 64)
    other.chmod(0o600)

    tier = job_run.Tier(tmp_path, 1, args=["--secret-file", str(path)])
    try:
        assert tier.exports["HVD_PS_SECRET_FILE"] == str(path)
        ((code, so, se),) = job_run.finish_all(
            [_job(tmp_path, 1, limit=90, **{**tier.exports, "HVD_PS_SECRET_FILE": str(other)})],
            100,
        )
        assert code != 0 and "Traceback" not in se, se[-3000:]
        assert "hvd_ps: TierError: group 0's leader could not join the PS tier's roster" in se
        assert "does not hold the tier's secret (HVD_PS_SECRET_FILE must name" in se, se[-3000:]
        ((code, so, se),) = job_run.finish_all([_job(tmp_path, 1, **tier.exports)], 170)
        assert code == 0, so + se[-3000:]
        _, err = tier.proc.communicate(timeout=30)  # its one group has left
        assert tier.proc.returncode == 0, err
        assert "the roster refused a connection" in err and "refused 1 connection(s)" in err
    finally:
        assert tier.stop() == 0
    job_run.assert_gone([], token=str(tmp_path))


def test_a_stranger_with_the_tiers_exports_is_never_registered(tmp_path: Path) -> None:
    """The attack 'join and be served', replayed: a process with the tier's printed exports
    but not its secret registers with the scheduler as a ps-lite worker before the job does
    (ps-lite's ADD_NODE, as a stock MXNet worker sends it). It used to take the tier's one
    worker place, so the job's leader was never answered. Now the scheduler never answers the
    stranger, the leader (announced through its lease) takes the place, and the job and the
    tier end with 0."""
    import zmq

    from hvd_ps.ps import scheduler as sch

    tier = job_run.Tier(tmp_path, 1)
    ctx = zmq.Context()
    try:
        inbox = ctx.socket(zmq.ROUTER)  # where the scheduler would answer the stranger
        port = inbox.bind_to_random_port("tcp://127.0.0.1")
        out = ctx.socket(zmq.DEALER)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(f"tcp://127.0.0.1:{tier.exports['DMLC_PS_ROOT_PORT']}")
        out.send(sch.Meta(sch.ADD_NODE, [sch.Node(sch.WORKER, "127.0.0.1", port)]).encode())
        time.sleep(1.0)  # the stranger is first
        ((code, so, se),) = job_run.finish_all(
            [_job(tmp_path, 1, HVD_PS_GROUP_OFFSET="0", **tier.exports)], 170
        )
        assert code == 0, so + se[-3000:]
        assert not inbox.poll(0), "the scheduler answered the stranger"
        tier.proc.communicate(timeout=30)  # its one group has left
        assert tier.proc.returncode == 0
    finally:
        ctx.destroy(linger=0)
        assert tier.stop() == 0
    job_run.assert_gone([], token=str(tmp_path))


#: a stock MXNet worker (no hvd_ps, no lease): one sync round of one worker
STOCK_WORKER = """\
import mxnet as mx

kv = mx.kv.create("dist_sync")
kv.init(0, mx.nd.zeros((4,)))
kv.push(0, mx.nd.ones((4,)) * 3)
out = mx.nd.zeros((4,))
kv.pull(0, out=out)
print("pulled", out.asnumpy().tolist(), flush=True)
"""


@pytest.mark.parametrize("allow", [True, False])
def test_stock_workers_register_on_a_servers_only_tier_only_when_allowed(
    tmp_path: Path, allow: bool
) -> None:
    """A stock MXNet worker holds no lease, so nothing announces its node: with
    ``--allow-stock-workers`` it is registered and its round is served (the sum of its push);
    without, the scheduler never registers it (ps-lite then waits forever: the test's timeout
    ends it)."""
    script = tmp_path / "stock.py"
    script.write_text(STOCK_WORKER)
    tier = job_run.Tier(tmp_path, 1, args=["--allow-stock-workers"] if allow else [])
    try:
        limit = 60 if allow else 20
        env = job_run.env(DMLC_ROLE="worker", **tier.exports)
        proc = job_run.complete(
            job_run.bounded([sys.executable, str(script)], limit), env, timeout=limit + 15
        )
    finally:
        assert tier.stop() == 0
    if allow:
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert "pulled [3.0, 3.0, 3.0, 3.0]" in proc.stdout
    else:
        assert proc.returncode == 124 and "pulled" not in proc.stdout, proc.stdout
    job_run.assert_gone([], token=str(tmp_path))
