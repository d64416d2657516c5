"""Job: a ported Horovod script that keeps its own ``hvd.init()`` before ``hvd_ps.init()``.

``python horovod_init_job.py plain``: ``hvd.init()`` then ``hvd_ps.init(groups=[[0], [1]])``
must fail at once with a ConfigError naming the line to change; prints ``REFUSED <seconds>
<message>`` on every rank. ``dynamic``: ``hvd.init(process_sets='dynamic')`` then
``hvd_ps.init`` works: 6 steps of ModelAverage(period=2) match the numpy reference; prints
``TRAINED <max relative error>``.
"""

import sys
import time

import horovod.mxnet as hvd
import job_kit
import numpy as np
from job_kit import ref, say

import hvd_ps

GROUPS = [[0], [1]]

if sys.argv[1] == "plain":
    hvd.init()
    from mpi4py import MPI

    MPI.COMM_WORLD.Barrier()  # time hvd_ps.init alone, not a slower peer's imports
    start = time.perf_counter()
    try:
        hvd_ps.init(groups=GROUPS)
    except hvd_ps.ConfigError as err:
        say(f"REFUSED {time.perf_counter() - start:.2f} {err}")
        # end as a script that caught the error should: with the Horovod it started shut
        # down (left running, MXNet's and Horovod's teardown at exit crashed once in ~10 runs)
        hvd.shutdown()
        sys.exit(0)
    say("NOT REFUSED")
    sys.exit(1)

hvd.init(process_sets="dynamic")
hvd_ps.init(groups=GROUPS)
net = job_kit.reference_net()
trainer = hvd_ps.DistributedTrainer(
    net.collect_params(), "sgd", {"learning_rate": 0.1}, sync=hvd_ps.ModelAverage(2)
)
want = ref.run({"name": "ModelAverage", "period": 2}, GROUPS, 6, 0.1)
err = 0.0
for t in range(1, 7):
    job_kit.step(net, trainer, hvd.rank(), t)
    ew = want[t - 1]["x"][hvd_ps.group_id()][0]
    err = max(err, float(np.max(np.abs(net.weight.data().asnumpy() - ew)) / np.max(np.abs(ew))))
say(f"TRAINED {err:.3e}")
hvd_ps.shutdown()
