"""Stock MXNet workers against a tier of hvd_ps servers (MXNet's own dist tools, no hvd_ps).

Each test starts a scheduler and servers with :func:`hvd_ps.launch.spawn.start` on 127.0.0.1 and
runs plain worker processes (``tests/jobs/programs/stock_worker.py``: ``DMLC_ROLE=worker`` and
``mx.kv.create``). The values they pull are checked against numpy references written here
from the update rules (the workers' pushes are regenerated from their seeds). Every process
is bounded in time and ended by PID; a server that exits non-zero ends the job at once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import job_run
import numpy as np
import pytest

from hvd_ps.launch import spawn

sys.path.insert(0, str(job_run.PROGRAMS))
import stock_worker as sw  # noqa: E402  (the workers' data generators, to recompute pushes)

BOUND = 100  # MXNET_KVSTORE_BIGARRAY_BOUND: the 200-element "big" key is split over 2 servers
EXTRA = {"MXNET_KVSTORE_BIGARRAY_BOUND": str(BOUND), "HVD_PS_LOG_LEVEL": "INFO"}
JOB_TIMEOUT = 100.0


@dataclass
class Job:
    results: List[dict]  # one per worker that printed RESULT, sorted by ps-lite rank
    worker_codes: List[Optional[int]]
    server_codes: Dict[str, Optional[int]]
    died: Optional[str]  # the tier child that exited before the workers finished
    outputs: List[str]


def run_job(
    tmp_path, scenario, args, workers=2, servers=1, timeout=JOB_TIMEOUT, worker_env=None
) -> Job:
    """Tier of ``servers`` + ``workers`` stock workers; returns what each printed.

    ``worker_env`` adds variables to the workers' environment only.
    """
    tier = spawn.start(servers, workers, env_extra=EXTRA, timeout=60)
    procs: List[subprocess.Popen] = []
    logs: List[Path] = []
    died = None
    try:
        env = job_run.env(
            **EXTRA,
            DMLC_ROLE="worker",
            DMLC_PS_ROOT_URI="127.0.0.1",
            DMLC_PS_ROOT_PORT=str(tier.port),
            DMLC_NUM_SERVER=str(servers),
            DMLC_NUM_WORKER=str(workers),
            DMLC_NODE_HOST="127.0.0.1",
            STOCK_WORKER_TIMEOUT=str(timeout),
        )
        env.update(worker_env or {})
        for i in range(workers):
            logs.append(tmp_path / f"{scenario}.worker{i}.log")
            with open(logs[-1], "w") as out:
                procs.append(
                    subprocess.Popen(
                        job_run.program("stock_worker.py", scenario, json.dumps(args)),
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        end = time.monotonic() + timeout + 10
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            died = tier.dead()
            if died is not None and "code 0" not in died:
                break  # a server stopped the job: end the workers, as hvd_ps's launcher does
            died = None
            time.sleep(0.1)
    finally:
        job_run.kill(procs)
        tier.stop(grace=10 if died is None else 1)  # a scheduler never finishes a broken job
    leftover = [p.pid for p in procs + list(tier.procs.values()) if p.poll() is None]
    assert leftover == [], f"processes left running: {leftover}"
    outputs = [p.read_text() for p in logs]
    results = []
    for text in outputs:
        for line in text.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT ") :]))
    results.sort(key=lambda r: r["rank"])
    return Job(
        results,
        [p.returncode for p in procs],
        {name: p.returncode for name, p in tier.procs.items()},
        died,
        outputs,
    )


def ok(job: Job, workers: int = 2) -> Job:
    detail = "\n".join(o[-2000:] for o in job.outputs)
    assert job.died is None, f"{job.died}\n{detail}"
    assert job.worker_codes == [0] * workers, detail
    assert all(c == 0 for c in job.server_codes.values()), job.server_codes
    assert [r["rank"] for r in job.results] == list(range(workers)), detail
    return job


# -- what the workers push (regenerated) and what the servers must end up with -----------------
DENSE = {"dense": (sw.SHAPE, np.float32, 1), "half": (sw.SHAPE, np.float16, 2)}
DENSE["big"] = ((sw.BIG,), np.float32, 3)


def pushed(name, rank, step):
    shape, dtype, seed = DENSE[name]
    return sw.grad(rank, step, shape, seed).astype(dtype)


def start(name):
    shape, dtype, seed = DENSE[name]
    return sw.initial(shape, seed).astype(dtype)


def sparse_push(rank, step):
    """The dense view of worker ``rank``'s row-sparse push (zero outside its rows)."""
    g = np.zeros(sw.ROWS, np.float32)
    rows = sw.sparse_rows(rank, step)
    g[rows] = sw.grad(rank, step, sw.ROWS, 4)[rows]
    return g, rows


def close(got, want, dtype=np.float32, err=""):
    tol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(np.asarray(got), np.asarray(want, np.float64), tol, tol, err)


ALL_KEYS = ["dense", "half", "big", "sparse"]
SGD = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "wd": 0.01, "rescale_grad": 0.5}


def test_dist_sync_without_optimizer_stores_the_round_sum(tmp_path):
    steps, K = 3, 2
    job = ok(
        run_job(
            tmp_path,
            "keys",
            {"kvstore": "dist_sync", "steps": steps, "keys": ALL_KEYS},
            workers=K,
            servers=2,
        )
    )
    sparse = sw.initial(sw.ROWS, 4).astype(np.float64)
    for step in range(steps + 1):
        s = min(step, steps - 1)  # the last entry: the final pull after a barrier
        if step < steps:
            parts = [sparse_push(r, s) for r in range(K)]
            union = sorted(set().union(*[rows for _, rows in parts]))
            sparse[union] = sum(g for g, _ in parts)[union]
        for res in job.results:
            for name in ("dense", "big"):
                want = sum(pushed(name, r, s) for r in range(K))
                close(res["pulled"][name][step], want, err=f"{name} step {step}")
            # float16 keys are summed in float16 on the server
            want16 = (pushed("half", 0, s) + pushed("half", 1, s)).astype(np.float16)
            np.testing.assert_array_equal(res["pulled"]["half"][step], want16.astype(np.float64))
            close(res["pulled"]["sparse"][step], sparse, err=f"sparse step {step}")


def sgd_reference(name, steps, K, lr, mom, wd, scale):
    """Server-side SGD with momentum on the round's sum (multi-precision for float16)."""
    w = start(name).astype(np.float32)
    m = np.zeros_like(w)
    out = []
    for s in range(steps):
        g = sum(pushed(name, r, s).astype(np.float32) for r in range(K))
        m = mom * m - lr * wd * w - lr * scale * g
        w = w + m
        out.append(w.astype(DENSE[name][1]))
    return out


def first_updates(log):
    """{key: [(server pid, elements, dtype, stype, by), ...]} from the servers' INFO lines."""
    found: Dict[int, list] = {}
    pattern = (
        r"hvd_ps server pid (\d+)\] INFO key (\d+): first update of this server's (\d+) "
        r"elements \((\w+), (\w+)\) by ([\w :]+)"
    )
    for pid, key, n, dtype, stype, by in re.findall(pattern, log):
        found.setdefault(int(key), []).append((int(pid), int(n), dtype, stype, by))
    return found


def test_dist_sync_runs_the_optimizer_sent_by_set_optimizer(tmp_path, capfd):
    steps, K = 3, 2
    lr, mom, wd, scale = 0.1, 0.9, 0.01, 0.5
    opt = dict(SGD, multi_precision=True)
    args = {"kvstore": "dist_sync", "steps": steps, "keys": ALL_KEYS, "optimizer": opt}
    job = ok(run_job(tmp_path, "keys", args, workers=K, servers=2))
    refs = {n: sgd_reference(n, steps, K, lr, mom, wd, scale) for n in DENSE}
    # row-sparse weight and gradient: a lazy update touches only the rows pushed in the round
    w = sw.initial(sw.ROWS, 4)
    m = np.zeros_like(w)
    sparse = []
    for s in range(steps):
        parts = [sparse_push(r, s) for r in range(K)]
        union = sorted(set().union(*[rows for _, rows in parts]))
        g = sum(g for g, _ in parts)
        m[union] = mom * m[union] - lr * wd * w[union] - lr * scale * g[union]
        w[union] += m[union]
        sparse.append(w.copy())
    for res in job.results:
        for step in range(steps + 1):
            s = min(step, steps - 1)
            for name in DENSE:
                got = res["pulled"][name][step]
                close(got, refs[name][s], DENSE[name][1], f"{name} step {step}")
            close(res["pulled"]["sparse"][step], sparse[s], err=f"sparse step {step}")
    # where the keys went: the big one is split over both servers, the others each on one
    seen = first_updates(capfd.readouterr().err)
    assert sorted(seen) == [10, 11, 12, 20], seen
    assert (
        sorted(n for _, n, *_ in seen[12]) == [sw.BIG // 2] * 2
        and len({p for p, *_ in seen[12]}) == 2
    )
    assert [(n, d, t, by) for _, n, d, t, by in seen[10]] == [
        (30, "float32", "default", "the stock optimizer")
    ]
    assert [(n, d) for _, n, d, *_ in seen[11]] == [(30, "float32")]  # multi-precision copy
    assert [(n, t) for _, n, _, t, _ in seen[20]] == [(30, "row_sparse")]
    # and without the optimizer the numbers would be far off (the test can fail)
    assert np.abs(refs["dense"][-1] - sum(pushed("dense", r, 2) for r in range(K))).max() > 0.5


def test_dist_async_runs_the_optimizer_on_every_push(tmp_path):
    steps, K = 4, 2
    lr, scale = 0.1, 0.5  # plain SGD: the result does not depend on the order of the pushes
    opt = {"name": "sgd", "learning_rate": lr, "rescale_grad": scale, "multi_precision": True}
    args = {"kvstore": "dist_async", "steps": steps, "keys": ALL_KEYS, "optimizer": opt}
    job = ok(run_job(tmp_path, "keys", args, workers=K, servers=2))
    for res in job.results:
        for name, (_, dtype, _) in DENSE.items():
            total = sum(
                pushed(name, r, s).astype(np.float32) for r in range(K) for s in range(steps)
            )
            want = (start(name).astype(np.float32) - lr * scale * total).astype(dtype)
            close(res["pulled"][name][-1], want, dtype, name)
        total = sum(sparse_push(r, s)[0] for r in range(K) for s in range(steps))
        close(res["pulled"]["sparse"][-1], sw.initial(sw.ROWS, 4) - lr * scale * total)


def test_dist_async_without_optimizer_assigns_each_push(tmp_path):
    """MXNet's own server aborts here ("Updater needs to be set for async mode")."""
    steps, K = 2, 2
    args = {"kvstore": "dist_async", "steps": steps, "keys": ALL_KEYS, "barrier_each": True}
    args["import_hvd_ps"] = True  # (it defuses only server roles; a worker is left alone)
    job = ok(run_job(tmp_path, "keys", args, workers=K, servers=2))
    sparse = sw.initial(sw.ROWS, 4).astype(np.float64)
    expect = {n: [] for n in ALL_KEYS}
    for s in range(steps):
        for turn in range(K):  # one worker pushes at a time, in rank order
            for name in DENSE:
                expect[name].append(pushed(name, turn, s))
            g, rows = sparse_push(turn, s)
            sparse[rows] = g[rows]
            expect["sparse"].append(sparse.copy())
    for res in job.results:
        for name in ALL_KEYS:
            got = res["pulled"][name]
            assert len(got) == steps * K + 1
            for i, want in enumerate(expect[name] + [expect[name][-1]]):
                close(got[i], want, np.float32, f"{name} #{i}")


def quantize_2bit(g, residual, threshold):
    """MXNet's 2-bit compression on the worker: +-threshold or 0, the rest kept as residual."""
    residual += g
    q = np.where(residual >= threshold, threshold, np.where(residual <= -threshold, -threshold, 0))
    residual -= q
    return q


def test_dist_sync_with_2bit_gradient_compression(tmp_path):
    steps, K, t = 4, 2, 0.5
    args = {
        "kvstore": "dist_sync",
        "steps": steps,
        "keys": ["dense", "big"],
        "compression": {"type": "2bit", "threshold": t},
    }
    job = ok(run_job(tmp_path, "keys", args, workers=K, servers=2))
    for name in ("dense", "big"):
        residual = [np.zeros(DENSE[name][0], np.float64) for _ in range(K)]
        want = []
        for s in range(steps):
            want.append(sum(quantize_2bit(pushed(name, r, s), residual[r], t) for r in range(K)))
        for res in job.results:
            for step in range(steps + 1):
                close(res["pulled"][name][step], want[min(step, steps - 1)], err=f"{name} {step}")
        assert any(np.abs(w).max() > 0 for w in want) and any((w == 0).any() for w in want)


# -- a stock Gluon Trainer ----------------------------------------------------------------------
TRAIN = {"lr": 0.1, "momentum": 0.9, "wd": 0.001, "batch": 4, "steps": 5}


def one_process_sgd(K):
    """SGD with momentum on the union of the K workers' batches, in numpy (float64)."""
    n_in, n_out, B = 4, 3, TRAIN["batch"]
    W, b = sw.initial((n_out, n_in), 5).astype(np.float64), sw.initial((n_out,), 6).astype(float)
    mW, mb = np.zeros_like(W), np.zeros_like(b)
    lr, mom, wd = TRAIN["lr"], TRAIN["momentum"], TRAIN["wd"]
    for s in range(TRAIN["steps"]):
        X = np.concatenate([sw.grad(r, s, (B, n_in), 7) for r in range(K)]).astype(float)
        Y = np.concatenate([sw.grad(r, s, (B, n_out), 8) for r in range(K)]).astype(float)
        dP = (X @ W.T + b - Y) / n_out  # L2Loss: 0.5 * mean over the outputs, per sample
        gW, gb = dP.T @ X, dP.sum(0)
        rescale = 1.0 / (K * B)
        mW = mom * mW - lr * (wd * W + rescale * gW)
        mb = mom * mb - lr * (wd * b + rescale * gb)
        W, b = W + mW, b + mb
    return W, b


def trainer_args(kvstore, update_on_kvstore, name="sgd", marker=""):
    opt = {"name": name, "learning_rate": TRAIN["lr"], "momentum": TRAIN["momentum"]}
    opt["wd"] = TRAIN["wd"]
    return {
        "kvstore": kvstore,
        "update_on_kvstore": update_on_kvstore,
        "optimizer": opt,
        "batch": TRAIN["batch"],
        "steps": TRAIN["steps"],
        "marker": marker,
    }


#: MXNet 1.9.1's Gluon Trainer races on a dist_sync KVStore with update_on_kvstore=False, on
#: any server (MXNet's own gives the same wrong weights): at the first step it queues a pull of
#: each initial weight (``kv.broadcast``) and then the pushpull of its gradient, with no engine
#: dependency between the two (the pull writes a receive buffer, the pushpull the gradient).
#: When the pushpull's request leaves first and the other worker's push closes the round
#: before the pull arrives, the pull returns the round's sum of gradients, which becomes that
#: worker's "initial" weight. MXNet's synchronous engine on the workers orders the two, which
#: is the remedy the README gives; the default update_on_kvstore (on the servers) has no race.
NO_INIT_RACE = {"MXNET_ENGINE_TYPE": "NaiveEngine"}


@pytest.mark.parametrize(
    "kvstore, update_on_kvstore, workers, on_kvstore, worker_env",
    [
        ("dist_sync", "default", 2, True, None),
        ("dist_sync", True, 2, True, None),
        ("dist_sync", False, 2, False, NO_INIT_RACE),
        ("dist_async", "default", 1, True, None),
    ],
)
def test_gluon_trainer_equals_one_process_sgd(
    tmp_path, kvstore, update_on_kvstore, workers, on_kvstore, worker_env
):
    args = trainer_args(kvstore, update_on_kvstore)
    job = ok(run_job(tmp_path, "trainer", args, workers=workers, worker_env=worker_env), workers)
    W, b = one_process_sgd(workers)
    W0 = sw.initial((3, 4), 5)
    assert np.abs(W - W0).max() > 0.05  # it did train
    for res in job.results:
        assert res["update_on_kvstore"] is on_kvstore
        np.testing.assert_allclose(res["weight"], W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res["bias"], b, rtol=1e-4, atol=1e-5)


def test_refused_optimizer_stops_the_job_visibly(tmp_path, capfd):
    """A Trainer whose optimizer is a subclass defined outside MXNet, pickling to os.system."""
    marker = tmp_path / "pwned"
    args = trainer_args("dist_sync", "default", name="evil", marker=str(marker))
    t0 = time.monotonic()
    job = run_job(tmp_path, "trainer", args, workers=2, timeout=60)
    took = time.monotonic() - t0
    log = capfd.readouterr().err
    assert not marker.exists()  # the payload never ran
    assert job.died is not None and "exited with code 4" in job.died, (job.died, log[-3000:])
    assert "refused the optimizer of a kv.set_optimizer" in log, log[-3000:]
    assert "global posix.system is not allowed" in log or "stock_worker.EvilSGD" in log, log
    assert "needs the optimizer this server refused" in log and "(exit code 4)" in log
    assert job.results == [] and all(c != 0 for c in job.worker_codes), job.worker_codes
    assert took < 55, took  # ended by the server's exit, not by the workers' 60 s bound
