"""The cluster suite's timed windows: where they start and what they hold."""

import argparse

import pytest

from benchmarks.cluster_suite import warmup_steps


@pytest.mark.parametrize("period", [2, 5, 16])
@pytest.mark.parametrize("warmup", [0, 1, 2, 15, 16, 17])
def test_overlapped_window_starts_an_exchange_and_ends_with_it_applied(period, warmup):
    args = argparse.Namespace(warmup=warmup)
    for tau in range(1, period):
        w = warmup_steps(args, dict(overlap=tau, period=period))
        assert w >= warmup
        window = range(w + 1, w + period + 1)  # steps t counted from 1, one period timed
        launches = [t for t in window if t % period == 0]
        assert launches == [window[0]]  # its first step starts the exchange...
        assert launches[0] + tau <= window[-1]  # ...which is applied inside the window
        assert (window[-1] + 1) % period == 0  # and the next one starts after the job
        assert w - warmup < period  # no more than a period of extra warm-up


def test_blocking_window_keeps_the_warmup_and_holds_one_exchange():
    args = argparse.Namespace(warmup=1)
    w = warmup_steps(args, dict(overlap=0, period=16))
    assert w == 1
    assert [t for t in range(w + 1, w + 17) if t % 16 == 0] == [16]


def suite_args(**kw):
    base = dict(methods=["horovod", "dist_sync", "gradient_push", "model_average", "bound"],
                period=16, overlap=15, steps=16, slow_steps=2, warmup=1, seed=3, acc_seeds=2,
                acc_methods=["horovod", "model_average", "bound", "dist_sync"],
                ps_mode="sync", max_staleness=None, slow_group=None, slowdown=2.0,
                quorum=None, grace=None)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_jobs_share_one_job_but_dist_sync_runs_alone():
    from benchmarks.cluster_suite import jobs_of, plan

    specs = plan(suite_args(), overlap_ok=True)
    jobs = jobs_of(specs)
    assert [[s["name"] for s in j] for j in jobs] == [
        ["dist_sync"],
        ["horovod", "gradient_push", "model_average k=16", "model_average k=16 overlap=15",
         "bound"],
    ]  # fmt: skip
    assert sorted(s["name"] for j in jobs for s in j) == sorted(s["name"] for s in specs)
    assert jobs_of([s for s in specs if s["method"] == "dist_sync"] * 2) == [
        [specs[1]],
        [specs[1]],
    ]  # two stock runs: two jobs (the stock KVStore starts once per process)


def test_accuracy_runs_follow_the_throughput_runs_in_the_shared_job():
    from benchmarks.cluster_suite import accuracy_plan, jobs_of, plan

    args = suite_args(acc_seeds=1)
    throughput, acc = plan(args, overlap_ok=True), accuracy_plan(args, overlap_ok=True)
    jobs = jobs_of(throughput + acc)
    assert [[(s["name"], s["mode"]) for s in j] for j in jobs] == [
        [("dist_sync", "throughput")],
        [("dist_sync", "accuracy")],  # a stock run is a job of its own in either mode
        [(n, "throughput") for n in ["horovod", "gradient_push", "model_average k=16",
                                     "model_average k=16 overlap=15", "bound"]]
        + [(n, "accuracy") for n in ["horovod", "model_average k=16",
                                     "model_average k=16 overlap=15"]],
    ]  # fmt: skip


def test_accuracy_plan_runs_every_seed_without_the_bound():
    from benchmarks.cluster_suite import accuracy_plan

    runs = accuracy_plan(suite_args(), overlap_ok=True)
    names = ["horovod", "dist_sync", "model_average k=16", "model_average k=16 overlap=15"]
    assert [(r["name"], r["seed"]) for r in runs] == [(n, 3) for n in names] + [
        (n, 4) for n in names
    ]
    assert {r["mode"] for r in runs} == {"accuracy"}


def test_a_job_spec_carries_the_window_and_the_wire():
    from benchmarks.cluster_suite import job_spec, plan

    args = suite_args(batch=32, hidden="8,8", acc_hidden="4,4", eval=False, wire="float16",
                      epochs=3, target=0.9)  # fmt: skip
    by_name = {s["name"]: s for s in plan(args, overlap_ok=True)}
    ov = job_spec(by_name["model_average k=16 overlap=15"], args)
    assert (ov["warmup"], ov["steps"], ov["overlap"], ov["hidden"]) == (15, 16, 15, "8,8")
    assert job_spec(by_name["horovod"], args)["fp16_allreduce"] is True
    assert job_spec(by_name["dist_sync"], args)["fp16_allreduce"] is False
    acc = job_spec(dict(by_name["horovod"], seed=4, mode="accuracy"), args)
    assert (acc["hidden"], acc["epochs"], acc["seed"], acc["target"]) == ("4,4", 3, 4, 0.9)
    from benchmarks.suite_job import RUN_DEFAULTS

    assert set(ov) <= set(RUN_DEFAULTS) and set(acc) <= set(RUN_DEFAULTS)
    assert (ov["ps_mode"], ov["slow_group"], ov["quorum"]) == ("sync", None, None)
    quorum = job_spec(by_name["horovod"], suite_args(**dict(vars(args), quorum=1, grace=0.5)))
    assert (quorum["quorum"], quorum["grace"]) == (1, 0.5)
    slow = job_spec(by_name["horovod"], suite_args(**dict(vars(args), ps_mode="async",
                    max_staleness=2, slow_group=1, slowdown=3.0)))  # fmt: skip
    assert (slow["ps_mode"], slow["max_staleness"], slow["slow_group"], slow["slowdown"]) == (
        "async",
        2,
        1,
        3.0,
    )


def test_a_runs_set_up_time_is_its_slowest_ranks():
    from benchmarks.report import setup_s

    ranks = [{"run_started": 10.0, "set_up": 12.5}, {"run_started": 10.2, "set_up": 14.0}]
    assert setup_s(ranks) == pytest.approx(3.8)
    assert setup_s(ranks + [{"run_started": 10.0}]) is None  # a job that did not record it
