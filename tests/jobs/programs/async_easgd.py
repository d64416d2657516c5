"""Job: async EASGD with one group 5x slower than the other (4 ranks, groups [0,1] and [2,3]).

Prints one JSON line from rank 0: each group's wall time for its steps, and the centre's
error against c0 + (sum of every d any leader pushed).
"""

import json
import sys
import time

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

import hvd_ps

sys.path.insert(0, __file__.rsplit("/jobs/", 1)[0])
import reference as ref  # noqa: E402
from say import say  # noqa: E402  (tests/jobs/programs/say.py: one write per line)

STEPS, FAST, SLOW = 30, 0.01, 0.05

hvd_ps.init(groups=[[0, 1], [2, 3]])
rank, gid = hvd.rank(), hvd_ps.group_id()
net = mx.gluon.nn.Dense(ref.OUT, in_units=ref.IN)
net.initialize()
w0, b0 = ref.initial()
net.weight.set_data(mx.nd.array(w0))
net.bias.set_data(mx.nd.array(b0))
params = net.collect_params()
hvd_ps.broadcast_parameters(params)
sync = hvd_ps.EASGD(period=1, alpha=0.3, mode="async")
trainer = hvd_ps.DistributedTrainer(params, "sgd", {"learning_rate": 0.05}, sync=sync)


def flat() -> np.ndarray:
    """The trained parameters in the trainer's (fused buffer) order."""
    return np.concatenate([p.data().asnumpy().ravel() for p in trainer._params])


c0 = flat()
pushed = np.zeros_like(c0)

start = time.perf_counter()
for t in range(1, STEPS + 1):
    x, y = ref.batch(rank, t)
    with mx.autograd.record():
        loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum(axis=1)
    loss.backward()
    time.sleep(SLOW if gid == 1 else FAST)
    trainer.step(ref.BATCH)
    if hvd_ps.is_leader():
        pushed += trainer._buckets[0].out.asnumpy()  # the d this leader just pushed
elapsed = time.perf_counter() - start

times = hvd.allgather_object((gid, elapsed), name="times")
total = hvd.allreduce(mx.nd.array(pushed), average=False, name="pushed").asnumpy()
trainer.pull_global()  # the centre
centre = flat()
err = float(np.max(np.abs(centre - (c0 + total))))
if rank == 0:
    fast = max(e for g, e in times if g == 0)
    slow = min(e for g, e in times if g == 1)
    say(
        "RESULT "
        + json.dumps(
            {
                "fast_s": fast,
                "slow_s": slow,
                "centre_err": err,
                "pushed_norm": float(np.abs(total).sum()),
            }
        )
    )
hvd_ps.shutdown()
