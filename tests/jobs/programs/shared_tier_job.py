"""A job for tests/jobs/test_shared_tier.py: every sync strategy on the reference model, in order.

``python shared_tier_job.py OUT_DIR [--groups JSON]``

One job alone (e.g. 2 ranks, ``--groups '[[0],[1]]'``, its own embedded tier) or one of
several jobs sharing a ``hvdps-run --servers-only`` tier (``HVD_PS_GROUP_OFFSET`` /
``HVD_PS_TOTAL_GROUPS`` in the environment) trains tests/reference.py's linear model with
GradientPush, ModelAverage, EASGD (default alpha: 0.9 / G) and DiLoCo, all sync, one after
the other. Groups here are single ranks and data is sharded by the global group id, so group
``g`` sees reference rank ``g``'s batches whichever job it is in. The leader of each group
writes ``OUT_DIR/group<g>.npz`` (per strategy: the weight and bias after every step, and
the global model from ``pull_global``) and prints ``group g of G (job: i of n)``.
"""

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import job_kit  # noqa: E402
import numpy as np  # noqa: E402
from job_kit import say  # noqa: E402

import hvd_ps  # noqa: E402

#: (name, strategy, steps): three or more exchanges each
CASES = [
    ("GradientPush", lambda: hvd_ps.GradientPush(mode="sync"), 4),
    ("ModelAverage", lambda: hvd_ps.ModelAverage(period=2), 8),
    ("EASGD", lambda: hvd_ps.EASGD(period=2, mode="sync"), 8),
    ("DiLoCo", lambda: hvd_ps.DiLoCo(period=3, outer_lr=0.7, momentum=0.9), 9),
]
LR = 0.1

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--groups", type=json.loads, default=None)
args = p.parse_args()

hvd_ps.init(groups=args.groups)
gid, total = hvd_ps.global_group_id(), hvd_ps.total_groups()
assert hvd_ps.group_size() == 1, "this job's groups are single ranks"
say(f"group {gid} of {total} (job: {hvd_ps.group_id()} of {hvd_ps.num_groups()})")
record = {}
for name, make, steps in CASES:
    net = job_kit.reference_net(prefix=f"{name.lower()}_")
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=make()
    )
    ws, bs = [], []
    for t in range(1, steps + 1):
        job_kit.step(net, trainer, gid, t)  # the data of global group gid
        ws.append(net.weight.data().asnumpy())
        bs.append(net.bias.data().asnumpy())
    trainer.pull_global(net.collect_params())
    record[f"{name}.w"], record[f"{name}.b"] = np.stack(ws), np.stack(bs)
    record[f"{name}.gw"] = net.weight.data().asnumpy()
    record[f"{name}.gb"] = net.bias.data().asnumpy()
    if name == "EASGD":
        record["EASGD.alpha"] = np.array(trainer.sync.alpha_for(hvd_ps.total_groups()))
np.savez(os.path.join(args.out, f"group{gid}.npz"), **record)
hvd_ps.shutdown()
say(f"group {gid} done")
