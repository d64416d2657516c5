"""A job stopped after step k and resumed from its checkpoint ends where the uninterrupted job
ends: the same parameters on every rank and the same global model (1e-6 relative).

For every strategy in sync mode, blocking and overlapped (the checkpoint then holds an exchange
in flight), stopped mid-period: run A trains ``steps`` steps without a stop; run B trains the
same data to step ``k`` and saves; run C starts from other parameters, loads B's checkpoint
(new PS keys, so the PS state comes from the file alone) and trains steps ``k+1 .. steps``.
The local optimizer has momentum and GradientPush's server optimizer too, so their states must
travel as well; DiLoCo's outer momentum lives on the servers.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402
from dense_model import reference_net  # noqa: E402

OPT = {"learning_rate": 0.1, "momentum": 0.9}

CASES = {  # spec, steps, stop after step k
    "GradientPush": ({"name": "GradientPush"}, 5, 2),
    "ModelAverage": ({"name": "ModelAverage", "period": 2}, 7, 3),
    "ModelAverage-overlap": ({"name": "ModelAverage", "period": 3, "overlap": 1}, 8, 3),
    "EASGD": ({"name": "EASGD", "period": 2}, 7, 3),
    "EASGD-overlap": ({"name": "EASGD", "period": 3, "overlap": 2}, 9, 4),
    "DiLoCo": ({"name": "DiLoCo", "period": 3}, 8, 4),
    "DiLoCo-overlap": ({"name": "DiLoCo", "period": 3, "overlap": 1}, 8, 3),
}


def _strategy(spec, num_groups):
    import hvd_ps

    name, period, overlap = spec["name"], spec.get("period"), spec.get("overlap", 0)
    if name == "GradientPush":
        return hvd_ps.GradientPush(mode="sync")
    if name == "ModelAverage":
        return hvd_ps.ModelAverage(period=period, overlap=overlap)
    if name == "EASGD":
        return hvd_ps.EASGD(period=period, alpha=0.4 / num_groups, overlap=overlap)
    return hvd_ps.DiLoCo(period=period, outer_lr=0.7, momentum=0.9, overlap=overlap)


def _run(case, tag, steps, first=1, save=None, load=None, go_on=False):
    """Train ``case`` (parameters named ``tag``) from step ``first`` to ``steps``; save after
    step ``save`` (and stop there, unless ``go_on``) or start by loading ``load``."""
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps

    spec = CASES[case][0]
    net = reference_net(tag, shifted=load is not None)  # shifted: only the checkpoint is right
    sync = _strategy(spec, hvd_ps.total_groups())
    trainer = hvd_ps.DistributedTrainer(net.collect_params(), "sgd", dict(OPT), sync=sync)
    if load is not None:
        trainer.load_checkpoint(load)
        assert trainer.t == first - 1
    else:
        hvd_ps.broadcast_parameters(net.collect_params())
    for t in range(first, steps + 1):
        x, y = ref.batch(hvd.rank(), t)
        with mx.autograd.record():
            loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum(axis=1)
        loss.backward()
        trainer.step(ref.BATCH)
        if t == save:
            path = _shared_path(case)
            trainer.save_checkpoint(path)
            if not go_on:
                return net, trainer, path
    return net, trainer, None


def _shared_path(case):
    import horovod.mxnet as hvd

    folder = tempfile.mkdtemp(prefix="hvd_ps-ckpt-") if hvd.rank() == 0 else None
    folder = hvd.broadcast_object(folder, root_rank=0, name=f"ckpt.dir.{case}")
    return os.path.join(folder, f"{case}.hvdps")


def _values(net):
    return np.concatenate([net.weight.data().asnumpy().ravel(), net.bias.data().asnumpy()])


def _close(got, want, what):
    err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-3)
    assert err < 1e-6, f"{what}: relative error {err:.2e}"


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_ends_where_the_uninterrupted_run_ends(rt, sync_client, case):
    import horovod.mxnet as hvd

    _, steps, k = CASES[case]
    net_a, trainer_a, _ = _run(case, f"{case}_a", steps)
    net_b, trainer_b, path = _run(case, f"{case}_r", steps, save=k)
    assert path is not None and trainer_b.t == k
    assert os.path.exists(path) or hvd.rank() != 0
    net_c, trainer_c, _ = _run(case, f"{case}_r", steps, first=k + 1, load=path)
    assert trainer_c.t == steps
    _close(_values(net_c), _values(net_a), f"{case}: rank {hvd.rank()}'s parameters")
    trainer_a.pull_global()
    trainer_c.pull_global()
    _close(_values(net_c), _values(net_a), f"{case}: the global model")
    # the run trained: its result is not the initial parameters
    w0, b0 = ref.initial()
    assert np.abs(_values(net_a) - np.concatenate([w0.ravel(), b0])).max() > 1e-3


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", [c for c in CASES if "overlap" in c])
def test_a_run_that_saves_and_goes_on_ends_where_it_would_have(rt, sync_client, case):
    """Saving leaves the job as it was: the exchange in flight lands as it would have (the
    save pulls every PS key, and MXNet pulls a key into the array last pushed to it)."""
    import horovod.mxnet as hvd

    _, steps, k = CASES[case]
    net_a, trainer_a, _ = _run(case, f"{case}_go_a", steps)
    net_d, trainer_d, _ = _run(case, f"{case}_go_d", steps, save=k, go_on=True)
    assert trainer_d.t == steps
    _close(_values(net_d), _values(net_a), f"{case}: rank {hvd.rank()}'s parameters")
    trainer_a.pull_global()
    trainer_d.pull_global()
    _close(_values(net_d), _values(net_a), f"{case}: the global model")


@pytest.mark.mpi(min_size=1)
def test_a_checkpoint_of_another_strategy_is_refused(rt, sync_client):
    import mxnet as mx

    import hvd_ps
    from hvd_ps.errors import CheckpointError

    _, _, path = _run("ModelAverage", "other_r", 2, save=2)
    net = mx.gluon.nn.Dense(ref.OUT, in_units=ref.IN, prefix="other_r_")
    net.initialize()
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", dict(OPT), sync=hvd_ps.ModelAverage(period=4)
    )
    with pytest.raises(CheckpointError, match=r"strategy = 'ModelAverage\(period=2"):
        trainer.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        trainer.load_checkpoint(path + ".missing")
