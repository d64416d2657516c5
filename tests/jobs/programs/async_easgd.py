"""Job: async EASGD with one group 5x slower than the other (4 ranks, groups [0,1] and [2,3]).

``python async_easgd.py``: blocking, period 1, 30 steps. ``python async_easgd.py overlap``:
overlap=1 with period 2, 29 steps (launches at 2, 4, ..., 28; each applied a step later).

Prints one JSON line from rank 0: each group's wall time for its steps, the centre's error
against c0 + (sum of every d any leader pushed, read when it was applied), how many exchanges
each leader applied, and the largest difference between two ranks of one group.
"""

import json
import sys
import time

import horovod.mxnet as hvd
import job_kit
import mxnet as mx
import numpy as np
from job_kit import ref, say

import hvd_ps

OVERLAP = sys.argv[1:] == ["overlap"]
FAST, SLOW = 0.01, 0.05
if OVERLAP:
    STEPS, sync = 29, hvd_ps.EASGD(period=2, alpha=0.3, mode="async", overlap=1)
else:
    STEPS, sync = 30, hvd_ps.EASGD(period=1, alpha=0.3, mode="async")

hvd_ps.init(groups=[[0, 1], [2, 3]])
rank, gid = hvd.rank(), hvd_ps.group_id()
net = job_kit.reference_net()
trainer = hvd_ps.DistributedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05}, sync=sync)


def flat() -> np.ndarray:
    """The trained parameters in the trainer's (fused buffer) order."""
    return np.concatenate([p.data().asnumpy().ravel() for p in trainer._params])


c0 = flat()
pushed = np.zeros_like(c0)
applied = 0

start = time.perf_counter()
for t in range(1, STEPS + 1):
    job_kit.backward(net, rank, t)
    time.sleep(SLOW if gid == 1 else FAST)
    trainer.step(ref.BATCH)
    # blocking: the exchange of step t was just applied; overlapped: the one of step t - 1
    if hvd_ps.is_leader() and (not OVERLAP or (t % 2 == 1 and t > 1)):
        pushed += trainer._buckets[0].out.asnumpy()  # the d it pushed
        applied += 1
elapsed = time.perf_counter() - start

times = hvd.allgather_object((gid, elapsed), name="times")
local = hvd.allgather_object((gid, flat()), name="local")
spread = max(float(np.max(np.abs(a - b))) for g, a in local for h, b in local if g == h)
counts = hvd.allgather_object(applied, name="applied")
total = hvd.allreduce(mx.nd.array(pushed), average=False, name="pushed").asnumpy()
trainer.pull_global()  # the centre
centre = flat()
err = float(np.max(np.abs(centre - (c0 + total))))
if rank == 0:
    fast = max(e for g, e in times if g == 0)
    slow = min(e for g, e in times if g == 1)
    result = {
        "fast_s": fast,
        "slow_s": slow,
        "centre_err": err,
        "pushed_norm": float(np.abs(total).sum()),
        "applied": counts,
        "group_spread": spread,
    }
    say("RESULT " + json.dumps(result))
hvd_ps.shutdown()
