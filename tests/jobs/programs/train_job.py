"""A small training job for the hvdps-run tests: least squares with a linear model, in groups.

``python train_job.py [--group-size N] [--steps S] [--pause P] [--exit-code C] [--token T]``

Without ``--group-size`` the script's ``hvd_ps.init()`` names no grouping (hvdps-run's
``--group-size``, or one group per host, applies). Every rank fits ``y = X w*`` on its own
fixed data (seeded by rank) with SGD; the groups average their models through the PS every
2 steps (sync ``ModelAverage``). Rank 0 prints ``step k loss L`` as it goes; at the end every
rank loads the global model and prints ``rank R group G of N loss0 L0 loss L w S`` (``S`` the
sum of the weights: equal on every rank), then exits with ``C``. ``--token`` is unused: it
marks the ranks' command lines, so a test can check none is left.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import horovod.mxnet as hvd  # noqa: E402
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from job_kit import say  # noqa: E402  (one write per line)

import hvd_ps  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--group-size", type=int, default=None)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--pause", type=float, default=0.0)
p.add_argument("--exit-code", type=int, default=0)
p.add_argument("--token", default="")
args = p.parse_args()

hvd_ps.init(group_size=args.group_size)
rank = hvd.rank()
DIM = 8
w_true = np.linspace(-1.0, 1.0, DIM, dtype=np.float32)
rng = np.random.default_rng(rank)
x_np = rng.standard_normal((32, DIM)).astype(np.float32)
x, y = mx.nd.array(x_np), mx.nd.array(x_np @ w_true)

net = mx.gluon.nn.Dense(1, use_bias=False, in_units=DIM)
net.initialize(mx.init.Zero())
params = net.collect_params()
hvd_ps.broadcast_parameters(params)
trainer = hvd_ps.DistributedTrainer(
    params, "sgd", {"learning_rate": 0.1}, sync=hvd_ps.ModelAverage(period=2)
)


def mse() -> float:
    return float(((net(x).reshape((-1,)) - y) ** 2).mean().asscalar())


loss0 = mse()
for step in range(args.steps):
    with mx.autograd.record():
        loss = ((net(x).reshape((-1,)) - y) ** 2).mean()
    loss.backward()
    trainer.step(1)
    if rank == 0:
        say(f"step {step} loss {loss.asscalar():.6f}")
    time.sleep(args.pause)
trainer.pull_global(params)
w = net.weight.data().asnumpy()
say(
    f"rank {rank} group {hvd_ps.group_id()} of {hvd_ps.num_groups()} loss0 {loss0:.6f} "
    f"loss {mse():.6f} w {w.sum():.6f}"
)
hvd_ps.shutdown()
sys.exit(args.exit_code)
