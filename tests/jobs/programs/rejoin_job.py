"""A job for tests/jobs/test_rejoin.py: one async group on a shared tier, until told to stop.

``python rejoin_job.py OUT_DIR STRATEGY TAG (--steps N [--done FILE] | --until FILE) [--jitter S]``

The group (all ranks of the job) trains tests/reference.py's linear model with an async
``STRATEGY`` (EASGD, DiLoCo or GradientPush), sleeping a little each step so that the jobs
sharing the tier overlap in time (plus a random ``0..S`` s with ``--jitter``). After every step
the leader writes how many exchanges it has made to ``OUT_DIR/<TAG>.count`` (so a test can
kill the job mid-run and still know what it pushed). It stops after ``N`` steps (then creates
``--done``'s file), or once ``FILE`` exists (bounded by ``--limit``, 120 s), then writes
``OUT_DIR/<TAG>.rank<r>.npz`` on every rank: the parameters right after the trainer's set-up
(``first``: a rejoining group's must be the PS's state), the exchanges made, the global model,
and how long ``hvd_ps.shutdown()`` took. Parameters are flat in the layout of the trainer's
fused buffer (the parameters in name order: bias, then weight).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import job_kit  # noqa: E402
import numpy as np  # noqa: E402
from job_kit import say  # noqa: E402

import hvd_ps  # noqa: E402

STRATEGIES = {
    "EASGD": lambda: hvd_ps.EASGD(period=2, alpha=0.2, mode="async"),
    "DiLoCo": lambda: hvd_ps.DiLoCo(period=2, outer_lr=0.7, momentum=0.9, mode="async"),
    "GradientPush": lambda: hvd_ps.GradientPush(mode="async"),
}
LR = 0.1

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("strategy", choices=sorted(STRATEGIES))
p.add_argument("tag")
p.add_argument("--steps", type=int)
p.add_argument("--until")
p.add_argument("--done")
p.add_argument("--jitter", type=float, default=0.0)
p.add_argument("--limit", type=float, default=120.0)
args = p.parse_args()

hvd_ps.init()
gid = hvd_ps.global_group_id()
net = job_kit.reference_net()
trainer = hvd_ps.DistributedTrainer(
    net.collect_params(), "sgd", {"learning_rate": LR}, sync=STRATEGIES[args.strategy]()
)
trainer._setup()  # fused buffers and PS keys now (a step would do it), to record `first`
first = np.concatenate([net.bias.data().asnumpy(), net.weight.data().asnumpy().ravel()])
say(f"{args.tag}: group {gid} of {hvd_ps.total_groups()} ready")
end = time.monotonic() + args.limit
rng = np.random.RandomState(gid)
t = 0
while True:
    if args.steps is not None and t >= args.steps:
        break
    if args.until is not None and (os.path.exists(args.until) or time.monotonic() > end):
        break
    t += 1
    job_kit.step(net, trainer, gid * 10 + hvd_ps.group_rank(), t % 50 + 1)
    if hvd_ps.is_leader():  # atomically: a reader never sees the file empty
        count = os.path.join(args.out, f"{args.tag}.count")
        with open(count + ".tmp", "w") as f:
            f.write(str(trainer.stats()["exchanges"]))
        os.replace(count + ".tmp", count)
    time.sleep(0.03 + (rng.uniform(0, args.jitter) if args.jitter else 0.0))
timed_out = args.until is not None and not os.path.exists(args.until)
exchanges = trainer.stats()["exchanges"]
trainer.pull_global(net.collect_params())
glob = np.concatenate([net.bias.data().asnumpy(), net.weight.data().asnumpy().ravel()])
leader = hvd_ps.is_leader()
start = time.monotonic()
hvd_ps.shutdown()
took = time.monotonic() - start
rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
np.savez(
    os.path.join(args.out, f"{args.tag}.rank{rank}.npz"),
    first=first,
    exchanges=exchanges,
    steps=t,
    glob=glob,
    shutdown_s=took,
)
say(f"{args.tag}: group {gid} done after {t} steps, {exchanges} exchanges")
if args.done is not None and leader:
    open(args.done, "w").close()
sys.exit(3 if timed_out else 0)
