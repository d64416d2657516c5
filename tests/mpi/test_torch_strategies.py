"""The PyTorch front end (``hvd_ps.torch``), run for real, matches the plain-numpy references
step by step, as the Gluon trainer does (tests/mpi/test_strategies.py, test_async_rules.py).

A ``torch.nn.Linear`` holding tests/reference.py's initial parameters trains with
``torch.optim.SGD`` on the same fixed per-rank batches and squared loss; after every step this
rank's parameters must equal the reference's parameters of its group, and at the end the global
model must be the reference's, to 1e-5 relative (float32 against a float64 reference):

* every sync strategy, blocking, and overlapped at ``tau = 1`` and ``tau = period - 1``;
* every async rule with the groups taking their turns in group order (each group's exchange
  applied on the servers before a barrier of all ranks lets the next group step);
* on the compressed wire (int8, int4 sessions), every sync strategy, blocking and overlapped,
  and the async ones in turns, against tests/wire_reference.py bit for bit: each rank's
  gradient is :func:`wire_reference.grad32` of its parameters (a loss ``sum(p * g)``), the
  learning rate and EASGD's ``alpha`` are powers of two (so a product is exact and torch's
  fused multiply-adds round as numpy's separate steps), and the optimizer holds the bias first,
  as the reference lays the buffer out. A float16 session checks the float rules to 4e-3.

Needs sessions of their own with ``HVD_PS_TEST_FRAMEWORK=torch`` (one framework per process;
scripts/test.sh runs them, sync and async, at several groupings); elsewhere it skips. torch is
imported inside the tests only: a module-level import after ``horovod.mxnet`` would crash an
MXNet session (docs/troubleshooting.md).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402
import wire_reference as wref  # noqa: E402
from strategy_spec import overlap_spec, strategy, sync_cases  # noqa: E402

LR = 0.1
TOL = 1e-5
PERIOD, STEPS = 3, 10  # the overlapped runs: exchanges start at steps 3, 6 and 9


def _compressed(rt):
    return rt.cfg.settings.wire_dtype in ("int8", "int4")


def _mode(rt, mode, compressed=False):
    """This session's tier in ``mode``; the float tests skip on a compressed wire and the
    compressed ones elsewhere."""
    if os.environ.get("HVD_PS_TEST_MODE", "sync") != mode:
        pytest.skip(f"needs a {mode} session (HVD_PS_TEST_MODE={mode})")
    if _compressed(rt) != compressed:
        pytest.skip(f"needs a session {'with' if compressed else 'without'} an int8/int4 wire")
    if rt.client is not None:
        rt.client.set_mode(mode, rounds=not compressed)


def _close(got, want, what):
    from hvd_ps.train import runtime

    tol = 4e-3 if runtime.runtime().cfg.settings.wire_dtype == "float16" else TOL
    scale = max(np.max(np.abs(want)), 1e-3)
    err = np.max(np.abs(got - want)) / scale
    assert err < tol, f"{what}: relative error {err:.2e} (tolerance {tol:g})"


def _model():
    import torch

    model = torch.nn.Linear(ref.IN, ref.OUT)
    w0, b0 = ref.initial()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w0, dtype=torch.float32))
        model.bias.copy_(torch.tensor(b0, dtype=torch.float32))
    return model


def _optimizer(tag, model, spec, mode="sync", momentum=0.0, lr=LR, **kwargs):
    """``model``'s hvd_ps optimizer (SGD over the bias, then the weight), after the broadcast."""
    import torch

    import hvd_ps.torch as hps

    hps.broadcast_parameters(model.state_dict(), root_rank=0)
    named = [(f"{tag}.{n}", p) for n, p in model.named_parameters()]
    return hps.DistributedOptimizer(
        torch.optim.SGD([model.bias, model.weight], lr=lr, momentum=momentum),
        named_parameters=named,
        sync=strategy(spec, mode),
        **kwargs,
    )


def _step(model, optimizer, rank, t):
    import torch

    x, y = ref.batch(rank, t)
    optimizer.zero_grad()
    out = model(torch.tensor(x, dtype=torch.float32))
    loss = 0.5 * ((out - torch.tensor(y, dtype=torch.float32)) ** 2).sum(dim=1).mean()
    loss.backward()
    optimizer.step()


def _check(model, want, what):
    w, b = want
    _close(model.weight.detach().numpy(), w, f"{what} weight")
    _close(model.bias.detach().numpy(), b, f"{what} bias")


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize(
    "case", ["GradientPush", "ModelAverage", "EASGD", "DiLoCo", "DiLoCo-heavy-ball"]
)
def test_torch_strategy_matches_numpy_reference(torch_rt, case):
    import horovod.torch as hvd
    import torch

    import hvd_ps

    _mode(torch_rt, "sync")
    groups = torch_rt.topo.groups
    spec, steps = sync_cases(len(groups))[case]
    want = ref.run(spec, groups, steps, LR)
    rank, gid = hvd.rank(), hvd_ps.group_id()
    model = _model()
    optimizer = _optimizer(f"sync.{case}", model, spec)
    assert isinstance(optimizer, torch.optim.SGD)  # still the user's optimizer class
    for t in range(1, steps + 1):
        _step(model, optimizer, rank, t)
        _check(model, want[t - 1]["x"][gid], f"{case} step {t}, rank {rank}")
    stats = optimizer.stats()
    assert stats["exchanges"] == steps // spec.get("period", 1) >= 3
    assert stats["steps"] == optimizer.t == steps
    optimizer.pull_global(model)
    _check(model, want[-1]["global"], f"{case} global, rank {rank}")
    if hvd_ps.is_leader():
        assert stats["bytes_pushed"] > 0 and stats["bytes_pulled"] > 0


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("overlap", [1, PERIOD - 1])
@pytest.mark.parametrize("name", ["ModelAverage", "EASGD", "DiLoCo"])
def test_torch_overlapped_exchange_matches_numpy_reference(torch_rt, name, overlap):
    """The exchange started at step ``t`` lands at the end of step ``t + tau``; at the end the
    last one may still be in flight, and ``global_model()`` completes it: inside the block the
    global model, after it the local parameters with that exchange applied."""
    import horovod.torch as hvd

    import hvd_ps

    _mode(torch_rt, "sync")
    groups = torch_rt.topo.groups
    spec = overlap_spec(name, len(groups), overlap, PERIOD)
    want = ref.run(spec, groups, STEPS, LR)
    rank, gid = hvd.rank(), hvd_ps.group_id()
    case = f"{name} overlap={overlap}"
    if name != "ModelAverage" or len(groups) > 1:  # the test can fail: overlap moves the run
        blocking = ref.run(dict(spec, overlap=0), groups, STEPS, LR)
        assert np.max(np.abs(want[-1]["x"][gid][0] - blocking[-1]["x"][gid][0])) > 1e-3
    model = _model()
    optimizer = _optimizer(f"ovl{overlap}.{name}", model, spec)
    for t in range(1, STEPS + 1):
        _step(model, optimizer, rank, t)
        _check(model, want[t - 1]["x"][gid], f"{case} step {t}, rank {rank}")
    assert optimizer.stats()["exchanges"] == STEPS // PERIOD
    with optimizer.global_model(model):
        _check(model, want[-1]["global"], f"{case} global, rank {rank}")
    _check(model, want[-1]["final"][gid], f"{case} final local, rank {rank}")


ASYNC_CASES = {  # spec, steps, the servers' SGD momentum (GradientPush)
    "GradientPush": ({"name": "GradientPush"}, 5, 0.0),
    "GradientPush-momentum": ({"name": "GradientPush"}, 5, 0.9),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.3}, 6, 0.0),
    "DiLoCo": (
        {"name": "DiLoCo", "period": 2, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True},
        8,
        0.0,
    ),
    "EASGD-overlap": ({"name": "EASGD", "period": 3, "alpha": 0.3, "overlap": 2}, 8, 0.0),
}


def _turn_barrier(tag):
    """Every rank of the job: one group's turn is over (its pushes are applied)."""
    import horovod.torch as hvd
    import mxnet as mx
    import torch

    mx.nd.waitall()  # a push completes once the servers have applied it
    hvd.allreduce(torch.zeros(1), name=tag)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(ASYNC_CASES))
def test_torch_async_rule_matches_numpy_reference_in_a_fixed_push_order(torch_rt, case):
    import horovod.torch as hvd

    import hvd_ps

    _mode(torch_rt, "async")
    groups = torch_rt.topo.groups
    spec, steps, momentum = ASYNC_CASES[case]
    want = ref.run_async(spec, groups, steps, LR, momentum)
    rank, gid = hvd.rank(), hvd_ps.group_id()
    model = _model()
    optimizer = _optimizer(f"async.{case}", model, spec, "async", momentum)
    with optimizer.global_model():  # the set-up (collective over all ranks) first
        pass
    for t in range(1, steps + 1):
        for turn in range(torch_rt.topo.num_groups):
            if turn == gid:
                _step(model, optimizer, rank, t)
            _turn_barrier(f"torch.async.{case}.{t}.{turn}")
        _check(model, want[t - 1]["x"][gid], f"{case} step {t}, rank {rank}")
    assert optimizer.stats()["exchanges"] == steps // spec.get("period", 1)
    optimizer.pull_global()
    _check(model, want[-1]["global"], f"{case} servers', rank {rank}")


@pytest.mark.mpi(min_size=1)
def test_torch_arguments_are_checked_naming_the_argument(torch_rt):
    import horovod.torch as hvd
    import torch

    import hvd_ps
    import hvd_ps.torch as hps
    from hvd_ps.train.torch import server_optimizer

    _mode(torch_rt, "sync")
    model = _model()
    params = list(model.parameters())
    cases = [
        (dict(optimizer="sgd"), "optimizer must be a torch.optim optimizer, got str"),
        (dict(op=hvd.Adasum), "op: hvd_ps allreduces inside a group with hvd.Average"),
        (dict(wire="int3"), "wire must be one of"),
        (dict(sync=hvd_ps.EASGD), "sync must be a strategy"),
        (
            dict(optimizer=torch.optim.RMSprop(params, lr=0.1), sync=hvd_ps.GradientPush()),
            "maps torch.optim.SGD and torch.optim.Adam there, not RMSprop",
        ),
        (
            dict(
                optimizer=torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.5),
                sync=hvd_ps.GradientPush(),
            ),
            "dampening=0.5 has no counterpart",
        ),
    ]
    for given, message in cases:
        args = dict(optimizer=torch.optim.SGD(params, lr=LR), sync=hvd_ps.ModelAverage(2))
        args.update(given)
        with pytest.raises(hvd_ps.ConfigError, match=message):
            hps.DistributedOptimizer(args.pop("optimizer"), **args)
    sgd = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    assert server_optimizer(sgd) == (
        "nag",
        {"learning_rate": 0.05, "momentum": 0.9, "wd": 1e-4},
    )
    adam = torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-7)
    assert server_optimizer(adam) == (
        "adam",
        {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-7, "wd": 0.0},
    )
    assert hps.group_id() == hvd_ps.group_id() and hps.num_groups() == torch_rt.topo.num_groups


#: the compressed wire's cases (tests/mpi/test_compressed_wire.py's, with alpha a power of two)
WIRE_LR = 0.125
WIRE_DILOCO = {"name": "DiLoCo", "period": 3, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True}
WIRE_CASES = {
    "GradientPush": ({"name": "GradientPush"}, 5),
    "ModelAverage": ({"name": "ModelAverage", "period": 2}, 8),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.25}, 8),
    "DiLoCo": (WIRE_DILOCO, 9),
    "ModelAverage-overlap": ({"name": "ModelAverage", "period": 3, "overlap": 2}, 9),
    "EASGD-overlap": ({"name": "EASGD", "period": 3, "alpha": 0.25, "overlap": 1}, 8),
    "DiLoCo-overlap": (dict(WIRE_DILOCO, overlap=2), 8),
}
WIRE_ASYNC_CASES = {
    "GradientPush": ({"name": "GradientPush"}, 5),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.25}, 6),
    "DiLoCo": (dict(WIRE_DILOCO, period=2), 8),
    "DiLoCo-overlap": (dict(WIRE_DILOCO, overlap=1), 10),
}


def _wire_setup(rt):
    """(bits, shard bounds) of this session's compressed wire, for the reference model."""
    from hvd_ps.ps import protocol

    if any(len(members) > 2 for members in rt.topo.groups):
        pytest.skip("a group of more than two ranks sums its gradients in Horovod's order")
    s = rt.cfg.settings
    bits = protocol.WIRE_BITS[s.wire_dtype]
    limit = protocol.shard_limit(bits, s.wire_block, s.kvstore_bound)
    cut = protocol.shards(ref.OUT * ref.IN + ref.OUT, s.wire_block, limit, s.num_servers)
    return bits, [0] + [hi for _, hi in cut]


def _wire_step(model, optimizer, rank, t):
    """Step ``t`` with this rank's reference gradient (a loss ``sum(p * g)``)."""
    import torch

    gw, gb = wref.grad32(model.weight.detach().numpy(), model.bias.detach().numpy(), rank, t)
    optimizer.zero_grad()
    loss = (model.weight * torch.from_numpy(gw)).sum() + (model.bias * torch.from_numpy(gb)).sum()
    loss.backward()
    optimizer.step()


def _wire_flat(model):
    return wref.flat(model.weight.detach().numpy(), model.bias.detach().numpy())


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(WIRE_CASES))
def test_torch_compressed_wire_matches_numpy_reference_bit_for_bit(torch_rt, case):
    import horovod.torch as hvd

    import hvd_ps

    _mode(torch_rt, "sync", compressed=True)
    bits, bounds = _wire_setup(torch_rt)
    spec, steps = WIRE_CASES[case]
    groups = [list(m) for m in torch_rt.topo.groups]
    block = torch_rt.cfg.settings.wire_block
    want = wref.run(spec, groups, steps, WIRE_LR, bits, block, bounds)
    gid, rank = hvd_ps.group_id(), hvd.rank()
    model = _model()
    optimizer = _optimizer(f"wire.{case}", model, spec, lr=WIRE_LR)
    for t in range(1, steps + 1):
        _wire_step(model, optimizer, rank, t)
        np.testing.assert_array_equal(_wire_flat(model), want[t - 1]["x"][gid], f"{case} {t}")
    with optimizer.global_model():
        np.testing.assert_array_equal(_wire_flat(model), want[-1]["global"], f"{case} global")
    np.testing.assert_array_equal(_wire_flat(model), want[-1]["final"][gid], f"{case} final")


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(WIRE_ASYNC_CASES))
def test_torch_async_compressed_wire_matches_numpy_reference_bit_for_bit(torch_rt, case):
    import horovod.torch as hvd

    import hvd_ps

    _mode(torch_rt, "async", compressed=True)
    bits, bounds = _wire_setup(torch_rt)
    spec, steps = WIRE_ASYNC_CASES[case]
    groups = [list(m) for m in torch_rt.topo.groups]
    block = torch_rt.cfg.settings.wire_block
    want = wref.run_async(spec, groups, steps, WIRE_LR, bits, block, bounds)
    gid, rank = hvd_ps.group_id(), hvd.rank()
    model = _model()
    optimizer = _optimizer(f"awire.{case}", model, spec, "async", lr=WIRE_LR)
    with optimizer.global_model():  # the set-up (collective over all ranks) first
        pass
    for t in range(1, steps + 1):
        for turn in range(torch_rt.topo.num_groups):
            if turn == gid:
                _wire_step(model, optimizer, rank, t)
            _turn_barrier(f"torch.awire.{case}.{t}.{turn}")
        np.testing.assert_array_equal(_wire_flat(model), want[t - 1]["x"][gid], f"{case} {t}")
    with optimizer.global_model():
        np.testing.assert_array_equal(_wire_flat(model), want[-1]["global"], f"{case} global")
