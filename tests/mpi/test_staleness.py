"""Bounded staleness (``max_staleness``) under a fixed schedule of group speeds.

The last group is slow: each of its ranks sleeps :data:`SLOW` seconds before every step, the
others do not. With ``max_staleness=s`` the fast groups must wait for it, and the order in
which the exchanges reach the servers is then the one tests/reference.py's
:func:`ssp_order` gives: with two groups there are no ties (the fast group's exchange always
lands a whole slow step away from the slow one's), so the run must equal
:func:`run_in_order`'s numpy model of the async rules in that order to 1e-5. With more groups
the fast ones are released together, in no fixed order, so only the bound is checked: every
group's ``max_staleness_seen`` is at most ``s``, and the fast ones waited. Without a bound the
fast groups run far ahead, which the same statistics show (the test can fail).

Needs an async tier: scripts/test.sh runs this file in the async sessions.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402
from dense_model import reference_net  # noqa: E402
from strategy_spec import strategy  # noqa: E402

LR = 0.1
#: seconds the slow group's ranks sleep before each step
SLOW = 0.25
EXCHANGES = 5
CASES = {  # spec, max_staleness
    "EASGD-s1": ({"name": "EASGD", "period": 2, "alpha": 0.3}, 1),
    "DiLoCo-s2": (
        {"name": "DiLoCo", "period": 2, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True},
        2,
    ),
    "EASGD-unbounded": ({"name": "EASGD", "period": 2, "alpha": 0.3}, None),
    "GradientPush-s1": ({"name": "GradientPush", "period": 1}, 1),  # an exchange every step
}


def _barrier(tag: str) -> None:
    import horovod.mxnet as hvd
    import mxnet as mx

    mx.nd.waitall()
    hvd.allreduce(mx.nd.zeros((1,)), name=tag).wait_to_read()


def _trained(tag: str, sync, steps: int, slow: float):
    """A Dense model and its trainer (``sync``), trained ``steps`` steps from the reference's
    start, the last group's ranks sleeping ``slow`` seconds before each: (net, trainer,
    stats), every rank past a barrier."""
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps

    net = reference_net(tag)
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=sync
    )
    hvd_ps.broadcast_parameters(net.collect_params())
    with trainer.global_model():  # the set-up (collective over all ranks) first
        pass
    _barrier(f"{tag}.start")
    slow_group = hvd_ps.group_id() == hvd_ps.num_groups() - 1
    for t in range(1, steps + 1):
        if slow_group:
            time.sleep(slow)
        x, y = ref.batch(hvd.rank(), t)
        with mx.autograd.record():
            loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum(axis=1)
        loss.backward()
        trainer.step(ref.BATCH)
    stats = trainer.stats()
    _barrier(f"{tag}.trained")
    return net, trainer, stats


def _equal(net, params) -> None:
    w, b = params
    np.testing.assert_allclose(net.weight.data().asnumpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bias.data().asnumpy(), b, rtol=1e-5, atol=1e-6)


def _matches(net, trainer, want, gid: int) -> None:
    """This group's parameters, then the servers' (``pull_global``), equal the model's."""
    _equal(net, want["x"][gid])
    trainer.pull_global(net.collect_params())
    _equal(net, want["global"])


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(CASES))
def test_bounded_staleness_order_and_math_match_the_numpy_model(rt, async_client, case):

    import hvd_ps

    groups = rt.topo.groups
    spec, bound = CASES[case]
    n, period = len(groups), spec["period"]
    seconds = [0.0] * (n - 1) + [SLOW]
    order, stale = ref.ssp_order(seconds, period, EXCHANGES, bound)
    sync = strategy(dict(spec, mode="async", max_staleness=bound), "async")
    tag = f"ssp_{case.replace('-', '_').lower()}"
    net, trainer, stats = _trained(tag, sync, period * EXCHANGES, SLOW)
    gid = hvd_ps.group_id()
    assert stats["exchanges"] == EXCHANGES
    if hvd_ps.is_leader():
        mine = [s for g, s in zip(order, stale) if g == gid]
        if bound is not None:
            assert stats["max_staleness_seen"] <= bound, stats
            if gid < n - 1 and n > 1:  # a fast group waited for the slow one
                assert stats["staleness_wait_s"] > SLOW, stats
                assert stats["max_staleness_seen"] == max(mine) == bound, (stats, mine)
        elif gid < n - 1:  # unbounded: the fast groups ran ahead of the slow one
            assert stats["max_staleness_seen"] >= 3, stats
            assert stats["staleness_wait_s"] == 0.0, stats
        if gid == n - 1:
            assert stats["staleness_wait_s"] == 0.0, stats
    if n <= 2:  # no ties: the order is the model's, and so is every number
        want = ref.run_in_order(dict(spec, mode="async"), groups, order, LR)
        _matches(net, trainer, want, gid)
        gw = want["global"][0]
        if n == 2 and bound is not None:  # and the bound changed the order (it can fail)
            free = ref.run_in_order(
                dict(spec, mode="async"),
                groups,
                ref.ssp_order(seconds, period, EXCHANGES, None)[0],
                LR,
            )
            assert np.max(np.abs(free["global"][0] - gw)) > 1e-4


AUTO_STEPS = 12  # every group's local steps
#: seconds the slow group sleeps a step here: the fast groups' steps must take < 1/8 of it
AUTO_SLOW = 0.4
AUTO = {  # spec (period='auto', max_period 4, min_period 1)
    "DiLoCo-auto": {
        "name": "DiLoCo", "period": "auto", "max_period": 4, "min_period": 1,
        "outer_lr": 0.7, "momentum": 0.9, "nesterov": True,
    },
    "EASGD-auto": {"name": "EASGD", "period": "auto", "max_period": 4, "min_period": 1,
                   "alpha": 0.3},
    # overlapped: launched at the period's step, applied one step later
    "DiLoCo-auto-overlap": {
        "name": "DiLoCo", "period": "auto", "max_period": 4, "min_period": 2, "overlap": 1,
        "outer_lr": 0.7, "momentum": 0.9, "nesterov": True,
    },
}  # fmt: skip


def auto_schedule(n: int, low: int):
    """The exchanges of :data:`AUTO_STEPS` steps when the last of ``n`` groups is slow
    (:data:`AUTO_SLOW` a step, the others ~100 times faster) and ``min_period`` is ``low``:
    every fast group exchanges every 4 steps; the slow one at step 4 (no pace known yet), at
    step 8 (its peers' paces arrived with its first exchange's pull: 4 * p_fast / p_slow rounds
    to 0, so ``low`` next), then every ``low`` steps, each push weighted by its steps / 4. An
    overlapped exchange changes nothing here: its period is picked at its start, from the pull
    that came with the previous exchange. With two groups the fast one's exchanges all land
    before the slow one's first. Returns (order, steps, weights) as
    :func:`reference.run_in_order` takes them, and each group's (exchanges, last period)."""
    fast = [4, 8, 12]
    slow = [4, 8] + list(range(8 + low, AUTO_STEPS + 1, low)) if n > 1 else fast
    order, steps, weights = [], [], []
    for g in range(n):
        mine = slow if g == n - 1 else fast
        for k, t in enumerate(mine):
            h = t - (mine[k - 1] if k else 0)
            order.append(g)
            steps.append(h)
            weights.append(h / 4)
    expect = {g: (len(fast), 4) for g in range(n - 1)}
    expect[n - 1] = (len(slow), low if n > 1 else 4)
    return order, steps, weights, expect


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(AUTO))
def test_auto_periods_follow_the_paces_and_the_math_matches_the_numpy_model(rt, async_client, case):

    import hvd_ps

    groups = rt.topo.groups
    spec, n = AUTO[case], len(rt.topo.groups)
    order, steps, weights, expect = auto_schedule(n, spec["min_period"])
    assert ref.auto_period(4, 1, 4, AUTO_SLOW, [0.004]) == 1  # the slow group's, in numpy
    sync = strategy(spec, "async")
    assert sync.adaptive and sync.base_period == 4
    tag = f"auto_{case.replace('-', '_').lower()}"
    net, trainer, stats = _trained(tag, sync, AUTO_STEPS, AUTO_SLOW)
    gid = hvd_ps.group_id()
    got = (stats["exchanges"], stats["period"])
    if n <= 2 or gid == n - 1:
        assert got == expect[gid], (stats, expect)
    else:  # the fast groups' paces differ a little too: a period of their own
        assert stats["period"] > 1 and stats["exchanges"] >= 3, stats
    if n <= 2:
        want = ref.run_in_order(dict(spec, period=4), groups, order, LR, steps=steps,
                                weights=weights if spec["name"] == "DiLoCo" else None)  # fmt: skip
        _matches(net, trainer, want, gid)
