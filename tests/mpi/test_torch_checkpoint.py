"""The PyTorch front end's checkpoints: a job stopped after step k and resumed from its file
ends where the uninterrupted job ends (every rank's parameters and the global model, 1e-6
relative; bit for bit on a compressed wire), as tests/mpi/test_checkpoint.py checks for Gluon.

Run A trains ``steps`` steps; run B trains to step ``k``, saves and goes on (the save changes
nothing: it ends as A); run C starts from other parameters, loads B's file (new PS keys: the PS
state comes from the file alone) and trains steps ``k+1 .. steps``. The local SGD has momentum
(``optimizer.state`` must travel), GradientPush's servers too, DiLoCo's outer momentum lives on
the servers, and the overlapped cases stop with an exchange in flight. Async cases take their
turns in group order. Needs ``HVD_PS_TEST_FRAMEWORK=torch`` sessions; elsewhere it skips.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402
from strategy_spec import strategy  # noqa: E402

LR, MOMENTUM = 0.125, 0.9
DILOCO = {"name": "DiLoCo", "period": 3, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True}
CASES = {  # spec, steps, stop after step k, the modes it runs in
    "GradientPush": ({"name": "GradientPush"}, 5, 2, ("sync", "async")),
    "ModelAverage-overlap": ({"name": "ModelAverage", "period": 3, "overlap": 1}, 8, 3, ("sync",)),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.25}, 7, 3, ("sync", "async")),
    "DiLoCo-overlap": (dict(DILOCO, overlap=1), 8, 3, ("sync", "async")),
}


def _tier_mode(rt):
    """The session's mode; its client set to it (compressed wires keep their own rounds)."""
    mode = os.environ.get("HVD_PS_TEST_MODE", "sync")
    if rt.client is not None:
        rt.client.set_mode(mode, rounds=rt.cfg.settings.wire_dtype not in ("int8", "int4"))
    return mode


def _path(tag):
    import tempfile

    import horovod.torch as hvd

    folder = tempfile.mkdtemp(prefix="hvd_ps-torch-ckpt-") if hvd.rank() == 0 else None
    folder = hvd.broadcast_object(folder, root_rank=0, name=f"torch.ckpt.dir.{tag}")
    return os.path.join(folder, f"{tag}.hvdps")


def _barrier(tag):
    import horovod.torch as hvd
    import mxnet as mx
    import torch

    mx.nd.waitall()  # a push completes once the servers have applied it
    hvd.allreduce(torch.zeros(1), name=tag)


def _run(rt, case, mode, tag, first, last, save=None, load=None):
    """Train ``case`` from step ``first`` to ``last`` (optimizer named ``tag``), saving to
    ``save = (step, path)`` after that step, or starting from the file ``load``; the model and
    the global model at the end (an exchange in flight completed)."""
    import horovod.torch as hvd
    import torch

    import hvd_ps
    import hvd_ps.torch as hps

    spec = CASES[case][0]
    model = torch.nn.Linear(ref.IN, ref.OUT)
    w0, b0 = ref.initial()
    if load is not None:  # only the checkpoint is right
        w0, b0 = w0 + 1.0, b0 - 2.0
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w0, dtype=torch.float32))
        model.bias.copy_(torch.tensor(b0, dtype=torch.float32))
    optimizer = hps.DistributedOptimizer(
        torch.optim.SGD([model.bias, model.weight], lr=LR, momentum=MOMENTUM),
        named_parameters=[(f"{tag}.{n}", p) for n, p in model.named_parameters()],
        sync=strategy(spec, mode),
    )
    if load is not None:  # sets the optimizer up (an exchange in flight stays in flight)
        optimizer.load_checkpoint(load)
    else:
        hps.broadcast_parameters(model.state_dict(), root_rank=0)
        if mode == "async":
            with optimizer.global_model():  # the set-up (collective over all ranks) first
                pass
    gid = hvd_ps.group_id()
    for t in range(first, last + 1):
        x, y = ref.batch(hvd.rank(), t)
        for turn in range(rt.topo.num_groups if mode == "async" else 1):
            if mode == "sync" or turn == gid:
                optimizer.zero_grad()
                out = model(torch.tensor(x, dtype=torch.float32))
                target = torch.tensor(y, dtype=torch.float32)
                (0.5 * ((out - target) ** 2).sum(dim=1).mean()).backward()
                optimizer.step()
            if mode == "async":
                _barrier(f"{tag}.{t}.{turn}")
        if save is not None and t == save[0]:
            optimizer.save_checkpoint(save[1])
    assert optimizer.t == last
    with optimizer.global_model():
        global_ = [model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()]
    return [model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()], global_


def _check(got, want, what, exact):
    for g, w, part in zip(got, want, ("weight", "bias")):
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {part}")
        else:
            err = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-3)
            assert err < 1e-6, f"{what} {part}: relative error {err:.2e}"


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_torch_run_ends_where_the_uninterrupted_one_ends(torch_rt, case):
    mode = _tier_mode(torch_rt)
    spec, steps, k, modes = CASES[case]
    if mode not in modes:
        pytest.skip(f"{case} has no {mode} mode")
    exact = torch_rt.cfg.settings.wire_dtype in ("int8", "int4")
    tag = f"tckpt.{mode}.{case}"
    path = _path(tag.replace(".", "_"))
    a_local, a_global = _run(torch_rt, case, mode, f"{tag}.a", 1, steps)
    b_local, b_global = _run(torch_rt, case, mode, f"{tag}.b", 1, steps, save=(k, path))
    c_local, c_global = _run(torch_rt, case, mode, f"{tag}.b", k + 1, steps, load=path)
    _check(b_local, a_local, f"{case}: saved and went on, local", exact)
    _check(b_global, a_global, f"{case}: saved and went on, global", exact)
    _check(c_local, a_local, f"{case}: resumed, local", exact)
    _check(c_global, a_global, f"{case}: resumed, global", exact)
