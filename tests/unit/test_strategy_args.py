"""Strategy arguments: every bad value raises ConfigError (a ValueError) naming the argument."""

import numpy as np
import pytest

import hvd_ps
from hvd_ps.errors import ConfigError
from hvd_ps.ps import protocol


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: hvd_ps.GradientPush(mode="sometimes"), "mode"),
        (lambda: hvd_ps.ModelAverage(period=0), "period"),
        (lambda: hvd_ps.ModelAverage(period=2.5), "period"),
        (lambda: hvd_ps.ModelAverage(period=True), "period"),
        (lambda: hvd_ps.ModelAverage(period=4, mode="async"), "mode"),
        (lambda: hvd_ps.EASGD(period=-1), "period"),
        (lambda: hvd_ps.EASGD(period=4, alpha=0.0), "alpha"),
        (lambda: hvd_ps.EASGD(period=4, alpha=1.0), "alpha"),
        (lambda: hvd_ps.EASGD(period=4, alpha="0.1"), "alpha"),
        (lambda: hvd_ps.EASGD(period=4, mode="lazy"), "mode"),
        (lambda: hvd_ps.DiLoCo(period=0), "period"),
        (lambda: hvd_ps.DiLoCo(period=8, outer_lr=0.0), "outer_lr"),
        (lambda: hvd_ps.DiLoCo(period=8, outer_lr=-1.0), "outer_lr"),
        (lambda: hvd_ps.DiLoCo(period=8, momentum=1.0), "momentum"),
        (lambda: hvd_ps.DiLoCo(period=8, momentum=-0.1), "momentum"),
        (lambda: hvd_ps.DiLoCo(period=8, nesterov="yes"), "nesterov"),
        (lambda: hvd_ps.DiLoCo(period=8, mode="eventually"), "mode"),
        (lambda: hvd_ps.EASGD(period=4, mode="async", max_staleness=0), "max_staleness"),
        (lambda: hvd_ps.DiLoCo(period=8, mode="async", max_staleness=1.5), "max_staleness"),
        (lambda: hvd_ps.GradientPush(mode="async", max_staleness=True), "max_staleness"),
        (lambda: hvd_ps.EASGD(period=4, max_staleness=2), "max_staleness"),
        (lambda: hvd_ps.ModelAverage(period=4, max_staleness=2), "max_staleness"),
        (lambda: hvd_ps.DiLoCo(period="auto"), "period='auto'"),
        (lambda: hvd_ps.DiLoCo(period="fast", mode="async"), "period"),
        (lambda: hvd_ps.DiLoCo(period="auto", mode="async", min_period=0), "min_period"),
        (lambda: hvd_ps.EASGD(period="auto", mode="async", max_period=2.5), "max_period"),
        (
            lambda: hvd_ps.EASGD(period="auto", mode="async", min_period=4, max_period=2),
            "min_period",
        ),
        (lambda: hvd_ps.DiLoCo(period=8, mode="async", min_period=2), "min_period"),
        (lambda: hvd_ps.DiLoCo(period="auto", mode="async", min_period=2, overlap=2), "overlap"),
        (lambda: hvd_ps.DiLoCo(period=8, quorum=0), "quorum"),
        (lambda: hvd_ps.DiLoCo(period=8, quorum=1.5), "quorum"),
        (lambda: hvd_ps.EASGD(period=4, mode="async", quorum=1), "quorum"),
        (lambda: hvd_ps.ModelAverage(period=4, grace=1.0), "grace"),
        (lambda: hvd_ps.GradientPush(quorum=1, grace=-1.0), "grace"),
    ],
)
def test_bad_argument_names_itself(make, arg):
    with pytest.raises(ConfigError, match=arg):
        make()
    with pytest.raises(ValueError):  # ConfigError is a ValueError too
        make()


@pytest.mark.parametrize("groups, alpha", [(2, 0.5), (4, 0.25), (4, 0.3), (10, 0.1)])
def test_sync_easgd_rejects_unstable_beta(groups, alpha):
    with pytest.raises(ConfigError, match="unstable"):
        hvd_ps.EASGD(period=4, alpha=alpha, mode="sync").validate(groups)


@pytest.mark.parametrize("groups, alpha", [(2, 0.49), (4, 0.2), (10, 0.09)])
def test_sync_easgd_accepts_stable_beta_and_async_anything(groups, alpha):
    hvd_ps.EASGD(period=4, alpha=alpha, mode="sync").validate(groups)
    hvd_ps.EASGD(period=4, alpha=0.9, mode="async").validate(groups)


@pytest.mark.parametrize("groups", [1, 2, 3, 8])
def test_easgd_default_alpha_is_0_9_over_groups(groups):
    s = hvd_ps.EASGD(period=4)
    assert s.alpha_for(groups) == pytest.approx(0.9 / groups)
    s.validate(groups)  # beta = 0.9 < 1


def test_the_bound_strategy_names_the_servers_rule_for_the_job():

    sgd = ("sgd", {"learning_rate": 0.1})
    assert hvd_ps.GradientPush("sync").bind(4, None, sgd).rule == protocol.Optimizer(
        "sgd", {"learning_rate": 0.1}, scale=0.25
    )
    # async: each push is 1/G of a round (delayed Nesterov for sgd and nag; lr / G otherwise)
    assert hvd_ps.GradientPush("async").bind(4, None, sgd).rule == protocol.Nesterov(
        lr=0.1, momentum=0.0, nesterov=True, scale=0.25, delay=4
    )
    nag = ("nag", {"learning_rate": 0.2, "momentum": 0.9, "wd": 1e-4, "rescale_grad": 2.0})
    assert hvd_ps.GradientPush("async").bind(2, None, nag).rule == protocol.Nesterov(
        lr=0.2, momentum=0.9, nesterov=True, scale=1.0, delay=2, wd=1e-4
    )
    adam = ("adam", {"learning_rate": 0.01})
    assert hvd_ps.GradientPush("async").bind(4, None, adam).rule == protocol.Optimizer(
        "adam", {"learning_rate": 0.01}, lr_scale=0.25
    )
    with pytest.raises(ConfigError, match="optimizer_params lr_mult: async GradientPush"):
        hvd_ps.GradientPush("async").bind(2, None, ("sgd", {"lr_mult": 2.0}))
    diloco = hvd_ps.DiLoCo(8, outer_lr=0.5, momentum=0.8, nesterov=False).bind(2, None).rule
    assert diloco == protocol.Nesterov(lr=0.5, momentum=0.8, nesterov=False, scale=0.5)
    assert hvd_ps.DiLoCo(8, mode="async").bind(4, None).rule == protocol.Nesterov(
        lr=0.7, momentum=0.9, nesterov=True, scale=0.25, delay=4
    )
    assert hvd_ps.ModelAverage(4).bind(3, None).rule == protocol.Assign()
    assert hvd_ps.EASGD(4).bind(3, None).rule == protocol.Add()
    assert hvd_ps.ModelAverage(4).bind(4, None).global_scale == 0.25
    assert hvd_ps.EASGD(4).bind(4, None).global_scale == 1.0
    assert hvd_ps.EASGD(4).bind(3, "float16").alpha == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="unstable"):  # binding checks the job's G
        hvd_ps.EASGD(4, alpha=0.5).bind(2, None)
    with pytest.raises(ConfigError, match="optimizer"):
        hvd_ps.GradientPush().bind(2, None)


@pytest.mark.parametrize(
    "strategy",
    [
        hvd_ps.GradientPush("async"),
        hvd_ps.ModelAverage(8, overlap=2),
        hvd_ps.EASGD(4, 0.2, "async", 1),
        hvd_ps.DiLoCo(16, 0.5, 0.8, False, "async", 3),
    ],
    ids=repr,
)
def test_a_strategy_is_an_immutable_value(strategy):
    import dataclasses

    again = eval(repr(strategy), {k: getattr(hvd_ps, k) for k in hvd_ps.__all__})
    assert again == strategy and hash(again) == hash(strategy)  # the cross-group check
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.period = 2
    first, second = strategy.bind(2, None, ("sgd", {})), strategy.bind(4, None, ("sgd", {}))
    assert (first.groups, second.groups) == (2, 4) and first is not second
    assert again == strategy  # binding never changes the value


def test_positional_arguments_keep_their_order():
    assert hvd_ps.GradientPush("async").mode == "async"
    e = hvd_ps.EASGD(8, 0.1, "async", 2)
    assert (e.period, e.alpha, e.mode, e.overlap) == (8, 0.1, "async", 2)
    d = hvd_ps.DiLoCo(32, 0.5, 0.8, False, "async", 4)
    assert (d.period, d.outer_lr, d.momentum, d.nesterov, d.mode, d.overlap) == (
        32,
        0.5,
        0.8,
        False,
        "async",
        4,
    )
    m = hvd_ps.ModelAverage(6, "sync", 5)
    assert (m.period, m.mode, m.overlap) == (6, "sync", 5)
    assert isinstance(hvd_ps.DiLoCo(8, outer_lr=1).outer_lr, float)


def test_gradient_push_needs_the_optimizer_by_name_with_numbers():
    from hvd_ps.train.trainer_checks import server_optimizer

    assert server_optimizer("SGD", {"learning_rate": 0.1}) == ("sgd", {"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="optimizer"):
        server_optimizer(object(), None)
    with pytest.raises(ConfigError, match="lr_scheduler"):
        server_optimizer("sgd", {"lr_scheduler": object()})


@pytest.mark.parametrize(
    "make",
    [
        lambda: hvd_ps.ModelAverage(period=4, overlap=4),
        lambda: hvd_ps.ModelAverage(period=4, overlap=-1),
        lambda: hvd_ps.EASGD(period=2, overlap=2),
        lambda: hvd_ps.EASGD(period=4, overlap=1.0),
        lambda: hvd_ps.EASGD(period=4, overlap=True),
        lambda: hvd_ps.DiLoCo(period=8, overlap=9),
        lambda: hvd_ps.DiLoCo(period=8, overlap="1"),
    ],
)
def test_bad_overlap_names_itself(make):
    with pytest.raises(ConfigError, match="overlap"):
        make()


def test_overlap_is_in_the_repr_that_groups_compare():
    assert repr(hvd_ps.ModelAverage(4)) == "ModelAverage(period=4, overlap=0)"
    assert repr(hvd_ps.ModelAverage(4, overlap=3)) == "ModelAverage(period=4, overlap=3)"
    assert repr(hvd_ps.EASGD(4, 0.2, overlap=1)).endswith("mode='sync', overlap=1)")
    assert repr(hvd_ps.DiLoCo(8, overlap=7)).endswith("mode='sync', overlap=7)")
    assert repr(hvd_ps.DiLoCo(8)) != repr(hvd_ps.DiLoCo(8, overlap=1))
    assert hvd_ps.EASGD(4, overlap=3).overlap == 3 and hvd_ps.GradientPush().overlap == 0


def _reference():

    import reference

    return reference


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "ModelAverage", "period": 3},
        {"name": "EASGD", "period": 2, "alpha": 0.2},
        {"name": "DiLoCo", "period": 3, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True},
    ],
)
def test_overlapped_reference_reduces_to_the_blocking_one_at_tau_0(spec):
    """The reference's overlapped equations with tau = 0 are the blocking equations."""
    ref = _reference()
    groups = [[0, 1], [2], [3, 4, 5]]
    blocking = ref.run(spec, groups, 9, 0.1)
    forced = ref._run_overlapped(dict(spec, overlap=0), groups, 9, 0.1)
    overlapped = ref.run(dict(spec, overlap=1), groups, 9, 0.1)
    for a, b in zip(blocking, forced):
        for g in range(len(groups)):
            for i in range(2):
                np.testing.assert_allclose(b["x"][g][i], a["x"][g][i], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b["global"][0], a["global"][0], rtol=1e-12, atol=1e-14)
    # and overlap does change the trajectory (so the MPI comparison can tell them apart)
    assert np.max(np.abs(overlapped[-1]["x"][0][0] - blocking[-1]["x"][0][0])) > 1e-3


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: hvd_ps.EASGD(peroid=4),
            "EASGD has no argument 'peroid': did you mean 'period'? "
            "(its arguments: period, alpha, mode, overlap, max_staleness, min_period, "
            "max_period, quorum, grace)",
        ),
        (
            lambda: hvd_ps.DiLoCo(8, outerlr=0.5),
            "DiLoCo has no argument 'outerlr': did you mean 'outer_lr'?",
        ),
        (lambda: hvd_ps.GradientPush(period=1), "GradientPush has no argument 'period'"),
        (lambda: hvd_ps.ModelAverage(4, period=4), "ModelAverage: period given twice"),
        (
            lambda: hvd_ps.EASGD(4, 0.1, "sync", 0, None, None, None, 2, 1.0, 9),
            "EASGD takes at most 9 arguments",
        ),
        (
            lambda: hvd_ps.ModelAverage(period=4, mode="async"),
            "mode must be one of sync, got 'async': ModelAverage has no async mode; "
            "GradientPush, EASGD and DiLoCo have one",
        ),
        (
            lambda: hvd_ps.EASGD(mode="asynch"),
            "mode must be one of sync, async, got 'asynch': did you mean 'async'?",
        ),
    ],
)
def test_a_wrong_argument_names_the_right_one(make, message) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value).startswith(message), str(err.value)


def test_max_staleness_and_period_auto_are_refused_together_naming_both():
    message = r"max_staleness=1 with period='auto'.*use one of the two"
    with pytest.raises(ConfigError, match=message):
        hvd_ps.EASGD(period="auto", mode="async", max_staleness=1)


def test_max_staleness_is_async_only_and_kept():
    with pytest.raises(ConfigError, match="in mode='sync' every round waits for every group"):
        hvd_ps.DiLoCo(period=8, max_staleness=2)
    assert hvd_ps.DiLoCo(period=8, mode="async", max_staleness=2).max_staleness == 2
    assert hvd_ps.EASGD(period=4, mode="async").max_staleness is None
    bounded = hvd_ps.GradientPush(mode="async", max_staleness=3)
    assert repr(bounded) == "GradientPush(mode='async', max_staleness=3)"
    assert repr(hvd_ps.GradientPush()) == "GradientPush(mode='sync')"
    assert bounded != hvd_ps.GradientPush(mode="async")  # groups compare strategies


def test_auto_period_defaults_and_repr():
    d = hvd_ps.DiLoCo(period="auto", mode="async")
    assert d.adaptive and (d.min_period, d.max_period, d.base_period) == (1, 16, 16)
    e = hvd_ps.EASGD(period="auto", mode="async", min_period=2, overlap=1)
    assert (e.min_period, e.max_period, e.base_period, e.overlap) == (2, 4, 4, 1)
    assert repr(e) == (
        "EASGD(period='auto', alpha=None, mode='async', overlap=1, min_period=2, max_period=4)"
    )
    fixed = hvd_ps.DiLoCo(period=8, mode="async")
    assert not fixed.adaptive and fixed.base_period == 8 and fixed.min_period is None
    with pytest.raises(ConfigError, match="min_period=2 goes with period='auto'"):
        hvd_ps.DiLoCo(period=8, mode="async", min_period=2)


def test_a_quorum_needs_a_compressed_wire_and_at_most_the_groups():
    """``quorum`` below the groups binds a :class:`protocol.Rounds` (auto grace: -1) on a
    compressed wire; with every group it is no quorum; float32 and float16 are refused, as
    is a quorum above the groups."""
    run = hvd_ps.DiLoCo(8, quorum=3, grace=0.5).bind(4, "int8")
    assert run.quorum == protocol.Rounds(4, 3, 0.5)
    run = hvd_ps.EASGD(4, quorum=1).bind(2, "int4")
    assert run.quorum == protocol.Rounds(2, 1, -1.0)
    assert hvd_ps.ModelAverage(4, quorum=4).bind(4, None).quorum is None
    for wire in (None, "float16"):
        with pytest.raises(ConfigError, match="quorum=3 needs a compressed wire"):
            hvd_ps.DiLoCo(8, quorum=3).bind(4, wire)
    with pytest.raises(ConfigError, match="quorum=5 is more than the 4 groups"):
        hvd_ps.GradientPush(quorum=5).bind(4, "int8", ("sgd", {}))
    assert repr(hvd_ps.ModelAverage(4, quorum=2)) == "ModelAverage(period=4, overlap=0, quorum=2)"
    assert "quorum=3, grace=0.5" in repr(hvd_ps.DiLoCo(8, quorum=3, grace=0.5))
    assert "quorum" not in repr(hvd_ps.DiLoCo(8))
