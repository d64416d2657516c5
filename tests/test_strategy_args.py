"""Strategy arguments: every bad value raises ConfigError (a ValueError) naming the argument."""

import pytest

import hvd_ps
from hvd_ps.errors import ConfigError


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


def test_server_updater_parameters_follow_the_mode():
    assert hvd_ps.GradientPush("sync").server_updater(4)[1]["scale"] == 0.25
    assert hvd_ps.GradientPush("async").server_updater(4)[1]["scale"] == 1.0
    sync = hvd_ps.DiLoCo(8, outer_lr=0.5, momentum=0.8, nesterov=False).server_updater(2)
    assert sync == ("nesterov", {"lr": 0.5, "momentum": 0.8, "nesterov": False, "scale": 0.5})
    assert hvd_ps.DiLoCo(8, mode="async").server_updater(2)[1]["scale"] == 1.0
    assert hvd_ps.ModelAverage(4).server_updater(3) == ("assign", {})
    assert hvd_ps.EASGD(4).server_updater(3) == ("add", {})
    assert hvd_ps.ModelAverage(4).global_scale(4) == 0.25
    assert hvd_ps.EASGD(4).global_scale(4) == 1.0


def test_gradient_push_needs_the_optimizer_by_name_with_numbers():
    from hvd_ps.trainer import _server_optimizer

    assert _server_optimizer("SGD", {"learning_rate": 0.1}) == ("sgd", {"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="optimizer"):
        _server_optimizer(object(), None)
    with pytest.raises(ConfigError, match="lr_scheduler"):
        _server_optimizer("sgd", {"lr_scheduler": object()})
