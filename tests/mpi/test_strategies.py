"""Every sync strategy, run for real, matches the plain-numpy reference step by step.

A linear model with a squared loss trains on fixed per-rank batches (tests/reference.py); after
every step this rank's parameters must equal the reference's parameters of its group, and at
the end ``pull_global`` must give the reference's global model, to 1e-5 relative (float32 run
against a float64 reference; 4e-3 with ``HVD_PS_WIRE_DTYPE=float16``). Runs at every world size
and grouping scripts/test.sh uses.

The overlapped exchange (``overlap=tau``) is checked the same way for ModelAverage, sync EASGD
and sync DiLoCo at ``tau = 1`` and ``tau = period - 1``: the exchange started at step ``t``
lands at the end of step ``t + tau``; at the end the last exchange is still in flight for
``tau = period - 1``, and ``global_model()`` completes it: inside the block the global model,
after it the local parameters with that exchange applied; then ``pull_global`` gives the
global model again.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402
from strategy_spec import overlap_spec, strategy, sync_cases  # noqa: E402

LR = 0.1


def _close(got, want, what, tol):
    scale = max(np.max(np.abs(want)), 1e-3)
    err = np.max(np.abs(got - want)) / scale
    assert err < tol, f"{what}: relative error {err:.2e} (tolerance {tol:g})"


def _tolerance(rt) -> float:
    # float32 on the wire: exact up to float32 rounding; float16: its 11-bit mantissa
    return 1e-5 if rt.cfg.settings.wire_dtype == "float32" else 4e-3


def _train(rt, name: str, spec, steps: int, on_step=None, broadcast=None, **trainer_args):
    """Train the reference model with the strategy ``spec`` on this rank's batches.

    ``broadcast(params)`` replaces ``hvd_ps.broadcast_parameters``; then every rank but 0
    starts from perturbed parameters, so only the broadcast makes them equal. ``trainer_args``
    go to ``hvd_ps.DistributedTrainer``.
    """
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps

    net = mx.gluon.nn.Dense(ref.OUT, in_units=ref.IN, prefix=f"{name}_")
    net.initialize()
    w0, b0 = ref.initial()
    if broadcast is not None and hvd.rank() != 0:
        w0, b0 = w0 + 0.25, b0 - 0.5
    net.weight.set_data(mx.nd.array(w0))
    net.bias.set_data(mx.nd.array(b0))
    (broadcast or hvd_ps.broadcast_parameters)(net.collect_params())
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=strategy(spec), **trainer_args
    )
    for t in range(1, steps + 1):
        x, y = ref.batch(hvd.rank(), t)
        with mx.autograd.record():
            loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum(axis=1)
        loss.backward()
        trainer.step(ref.BATCH)
        if on_step is not None:
            on_step(t, net)
    return net, trainer


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize(
    "case", ["GradientPush", "ModelAverage", "EASGD", "DiLoCo", "DiLoCo-heavy-ball"]
)
def test_strategy_matches_numpy_reference(rt, sync_client, case):
    import horovod.mxnet as hvd

    import hvd_ps

    groups = rt.topo.groups
    spec, steps = sync_cases(len(groups))[case]
    want = ref.run(spec, groups, steps, LR)
    rank, gid, tol = hvd.rank(), hvd_ps.group_id(), _tolerance(rt)

    def check(t, net):
        ew, eb = want[t - 1]["x"][gid]
        _close(net.weight.data().asnumpy(), ew, f"{case} step {t} weight, rank {rank}", tol)
        _close(net.bias.data().asnumpy(), eb, f"{case} step {t} bias, rank {rank}", tol)

    net, trainer = _train(rt, case.lower(), spec, steps, on_step=check)
    period = spec.get("period", 1)
    assert trainer.stats()["exchanges"] == steps // period >= 3
    trainer.pull_global(net.collect_params())
    gw, gb = want[-1]["global"]
    _close(net.weight.data().asnumpy(), gw, f"{case} global weight, rank {rank}", tol)
    _close(net.bias.data().asnumpy(), gb, f"{case} global bias, rank {rank}", tol)
    if hvd_ps.is_leader():
        stats = trainer.stats()
        assert stats["bytes_pushed"] > 0 and stats["bytes_pulled"] > 0


@pytest.mark.mpi(min_size=2)
def test_shape_mismatch_across_groups_is_an_error_on_every_rank(rt, sync_client):
    import mxnet as mx

    import hvd_ps

    if rt.topo.num_groups < 2:
        pytest.skip("needs two groups")
    units = 3 if hvd_ps.group_id() == 0 else 4  # group 0 builds another model
    net = mx.gluon.nn.Dense(units, in_units=2, prefix="mismatch_")
    net.initialize()
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": 0.1}, sync=hvd_ps.ModelAverage(2)
    )
    with mx.autograd.record():
        loss = net(mx.nd.ones((1, 2))).sum()
    loss.backward()
    with pytest.raises(hvd_ps.HvdPsError, match="differs across groups"):
        trainer.step(1)


@pytest.mark.mpi(min_size=1)
def test_global_model_context_shows_the_centre_then_restores_local_parameters(rt, sync_client):
    groups = rt.topo.groups
    spec, steps = sync_cases(len(groups))["EASGD"]
    want = ref.run(spec, groups, steps, LR)
    tol = _tolerance(rt)
    net, trainer = _train(rt, "globalctx", spec, steps)
    local = net.weight.data().asnumpy().copy(), net.bias.data().asnumpy().copy()
    with trainer.global_model():
        _close(net.weight.data().asnumpy(), want[-1]["global"][0], "centre weight", tol)
        _close(net.bias.data().asnumpy(), want[-1]["global"][1], "centre bias", tol)
    np.testing.assert_array_equal(net.weight.data().asnumpy(), local[0])
    np.testing.assert_array_equal(net.bias.data().asnumpy(), local[1])


PERIOD, STEPS = 3, 10  # exchanges start at steps 3, 6 and 9


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("overlap", [1, PERIOD - 1])
@pytest.mark.parametrize("name", ["ModelAverage", "EASGD", "DiLoCo"])
def test_overlapped_exchange_matches_numpy_reference(rt, sync_client, name, overlap):
    import horovod.mxnet as hvd

    import hvd_ps

    groups = rt.topo.groups
    spec = overlap_spec(name, len(groups), overlap, PERIOD)
    want = ref.run(spec, groups, STEPS, LR)
    blocking = ref.run(dict(spec, overlap=0), groups, STEPS, LR)
    rank, gid, tol = hvd.rank(), hvd_ps.group_id(), _tolerance(rt)
    case = f"{name} overlap={overlap}"
    # the test can fail: overlap moves the trajectory measurably away from the blocking one
    # (except ModelAverage with one group, where mean(x_t) = x_t and overlap changes nothing)
    if name != "ModelAverage" or len(groups) > 1:
        moved = np.max(np.abs(want[-1]["x"][gid][0] - blocking[-1]["x"][gid][0]))
        assert moved > 1e-3, moved  # 100x the float32 tolerance

    def check(t, net):
        ew, eb = want[t - 1]["x"][gid]
        _close(net.weight.data().asnumpy(), ew, f"{case} step {t} weight, rank {rank}", tol)
        _close(net.bias.data().asnumpy(), eb, f"{case} step {t} bias, rank {rank}", tol)

    net, trainer = _train(rt, f"ovl{overlap}{name.lower()}", spec, STEPS, on_step=check)
    stats = trainer.stats()
    assert stats["exchanges"] == STEPS // PERIOD
    assert 0.0 <= stats["ps_wait_s"] <= stats["exchange_s"]
    if not hvd_ps.is_leader():
        assert stats["ps_wait_s"] == 0.0
    gw, gb = want[-1]["global"]
    with trainer.global_model():
        _close(net.weight.data().asnumpy(), gw, f"{case} global weight, rank {rank}", tol)
        _close(net.bias.data().asnumpy(), gb, f"{case} global bias, rank {rank}", tol)
    fw, fb = want[-1]["final"][gid]
    _close(net.weight.data().asnumpy(), fw, f"{case} final local weight, rank {rank}", tol)
    _close(net.bias.data().asnumpy(), fb, f"{case} final local bias, rank {rank}", tol)
    trainer.pull_global(net.collect_params())
    _close(net.weight.data().asnumpy(), gw, f"{case} pull_global weight, rank {rank}", tol)
    _close(net.bias.data().asnumpy(), gb, f"{case} pull_global bias, rank {rank}", tol)


@pytest.mark.mpi(min_size=1)
def test_blocking_exchange_reports_its_ps_wait(rt, sync_client):
    import hvd_ps

    spec = overlap_spec("ModelAverage", rt.topo.num_groups, 0, PERIOD)
    _net, trainer = _train(rt, "blockwait", spec, 2 * PERIOD)
    stats = trainer.stats()
    assert stats["exchanges"] == 2
    if hvd_ps.is_leader():
        assert 0.0 < stats["ps_wait_s"] <= stats["exchange_s"]
    else:
        assert stats["ps_wait_s"] == 0.0


@pytest.mark.mpi(min_size=1)
def test_a_trainer_without_sync_says_its_default_once(rt, sync_client, capfd):
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps

    net = mx.gluon.nn.Dense(2, in_units=2, prefix="default_sync_")
    net.initialize()
    trainer = hvd_ps.DistributedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    assert trainer.sync == hvd_ps.ModelAverage(period=1)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if "without sync=" in ln]
    assert lines == (
        [
            "hvd_ps: DistributedTrainer without sync=: using ModelAverage(period=1, overlap=0), "
            "an exchange with the PS tier every step; pass sync= (e.g. "
            "hvd_ps.EASGD(period=4)) to exchange less often"
        ]
        if hvd.rank() == 0
        else []
    )


@pytest.mark.mpi(min_size=1)
def test_trainer_wire_and_bucket_arguments_override_the_environment(rt, sync_client):
    """``wire_dtype='float16'`` and a tiny ``bucket_mb`` (one PS key per parameter) on the
    trainer: DiLoCo still matches the reference within float16's rounding, and the leader
    pushes exactly two bytes per element per exchange, whatever HVD_PS_WIRE_DTYPE says."""
    import horovod.mxnet as hvd

    import hvd_ps

    groups = rt.topo.groups
    spec, steps = sync_cases(len(groups))["DiLoCo"]
    want = ref.run(spec, groups, steps, LR)
    gid, rank = hvd_ps.group_id(), hvd.rank()

    def check(t, net):
        ew, eb = want[t - 1]["x"][gid]
        _close(net.weight.data().asnumpy(), ew, f"float16 args step {t} weight, rank {rank}", 4e-3)
        _close(net.bias.data().asnumpy(), eb, f"float16 args step {t} bias, rank {rank}", 4e-3)

    before = rt.client.stats.bytes_pushed if rt.client else 0  # the session's client
    _, trainer = _train(
        rt, "wire_args", spec, steps, on_step=check, wire_dtype="float16", bucket_mb=1e-6
    )
    if hvd_ps.is_leader():
        pushed = rt.client.stats.bytes_pushed - before
        elements = ref.OUT * ref.IN + ref.OUT
        assert pushed == 2 * elements * trainer.stats()["exchanges"], pushed


@pytest.mark.mpi(min_size=1)
def test_global_model_on_a_leader_alone_needs_no_collective(rt, sync_client):
    """``global_model(local=True)`` on the leaders only (the other ranks never call it): the
    leader's parameters hold the reference's global model inside the block and its own after;
    a member that asks gets a ConfigError at once; pull_global(local=True) likewise."""
    import horovod.mxnet as hvd

    import hvd_ps
    from hvd_ps.errors import ConfigError

    groups = rt.topo.groups
    spec, steps = sync_cases(len(groups))["EASGD"]
    want = ref.run(spec, groups, steps, LR)
    net, trainer = _train(rt, "local_eval", spec, steps)
    tol, rank = _tolerance(rt), hvd.rank()
    own_w = net.weight.data().asnumpy().copy()
    if hvd_ps.is_leader():
        with trainer.global_model(local=True):
            gw, gb = want[-1]["global"]
            _close(net.weight.data().asnumpy(), gw, f"local global weight, rank {rank}", tol)
            _close(net.bias.data().asnumpy(), gb, f"local global bias, rank {rank}", tol)
        np.testing.assert_array_equal(net.weight.data().asnumpy(), own_w)
        trainer.pull_global(local=True)
        _close(net.weight.data().asnumpy(), want[-1]["global"][0], "pull_global(local)", tol)
    else:
        with pytest.raises(ConfigError, match=r"global_model\(local=True\) on rank \d+: only"):
            with trainer.global_model(local=True):
                pass
    hvd_ps.broadcast_parameters(net.collect_params())  # every rank again alike
