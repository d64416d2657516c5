"""A Horovod Gluon script ports as is: ``hvd_ps.DistributedTrainer`` takes every argument of
``horovod.mxnet.DistributedTrainer`` with the same meaning inside the group, and Horovod's own
``hvd.broadcast_parameters`` works in place of ``hvd_ps.broadcast_parameters``.

Each run trains the reference model (tests/reference.py) with ModelAverage(period=2) and must
match the numpy reference after every step (1e-5 relative; 2e-3 where the group allreduce
runs in float16 under ``compression=hvd.Compression.fp16``).
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402
import test_strategies as ts  # noqa: E402

SPEC, STEPS = {"name": "ModelAverage", "period": 2}, 6


def _run(rt, name, tol, broadcast=None, **trainer_args):
    import horovod.mxnet as hvd

    import hvd_ps

    want = ref.run(SPEC, rt.topo.groups, STEPS, ts.LR)
    gid, rank = hvd_ps.group_id(), hvd.rank()

    def check(t, net):
        ew, eb = want[t - 1]["x"][gid]
        ts._close(net.weight.data().asnumpy(), ew, f"{name} step {t} weight, rank {rank}", tol)
        ts._close(net.bias.data().asnumpy(), eb, f"{name} step {t} bias, rank {rank}", tol)

    ts._train(rt, name, SPEC, STEPS, on_step=check, broadcast=broadcast, **trainer_args)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("arg", ["gradient_predivide_factor", "num_groups", "process_set"])
def test_horovod_trainer_arguments_keep_the_group_mean(rt, sync_client, arg):
    import hvd_ps

    value = {"gradient_predivide_factor": 4.0, "num_groups": 1, "process_set": hvd_ps.group()}
    _run(rt, f"port_{arg}", ts._tolerance(rt), **{arg: value[arg]})


@pytest.mark.mpi(min_size=1)
def test_horovod_fp16_compression_of_the_group_allreduce(rt, sync_client):
    import horovod.mxnet as hvd

    _run(rt, "port_fp16", max(2e-3, ts._tolerance(rt)), compression=hvd.Compression.fp16)


@pytest.mark.mpi(min_size=1)
def test_horovods_own_broadcast_parameters_works_in_place_of_hvd_ps(rt, sync_client):
    """Every rank but 0 starts from other parameters: only the broadcast makes them equal."""
    import horovod.mxnet as hvd

    def horovod_broadcast(params):
        hvd.broadcast_parameters(params, root_rank=0, prefix="port_own_bcast.")

    _run(rt, "port_bcast", ts._tolerance(rt), broadcast=horovod_broadcast)


@pytest.mark.mpi(min_size=1)
def test_bad_horovod_arguments_are_config_errors_naming_them(rt, sync_client):
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps

    net = mx.gluon.nn.Dense(2, in_units=2, prefix="port_bad_")
    net.initialize()
    params = net.collect_params()

    def make(*args, **kwargs):
        return hvd_ps.DistributedTrainer(params, "sgd", {"learning_rate": 0.1}, *args, **kwargs)

    with pytest.raises(hvd_ps.ConfigError, match="compression"):
        make(compression="fp16")
    with pytest.raises(hvd_ps.ConfigError, match="compression: got a strategy; pass it as sync"):
        make(hvd_ps.EASGD(4))  # hvd_ps's sync given where Horovod's compression goes
    with pytest.raises(hvd_ps.ConfigError, match="gradient_predivide_factor"):
        make(gradient_predivide_factor=0.0)
    with pytest.raises(hvd_ps.ConfigError, match="num_groups"):
        make(num_groups=-1)
    if rt.topo.num_groups > 1:
        with pytest.raises(hvd_ps.ConfigError, match="process_set"):
            make(process_set=hvd.global_process_set)
    else:  # the only group is the whole world: Horovod's default set is the group
        make(process_set=hvd.global_process_set, prefix="port_bad_ok.")
