"""A job that is given bad input, for tests/jobs/test_bad_input.py: ``bad_input_job.py CASE``.

Each case lets its hvd_ps error end the job uncaught (one line per job, hvd_ps/exits.py):

* ``hvd-init-first``: ``hvd.init()`` before ``hvd_ps.init(groups=[[0], [1]])``;
* ``bad-layout``: ``hvd_ps.init(group_size=3)`` on 2 ranks;
* ``unreachable-tier``: ``hvd_ps.init()`` with ``DMLC_PS_ROOT_URI``/``PORT`` (set by the test)
  naming a port nobody listens on;
* ``nan-one-group``: groups of 2, ModelAverage(period=1); group 1 alone gets a NaN in its
  weight before step 2, so its leader refuses the push while group 0's waits in the round;
* ``strategy-typo-before-init``: ``hvd_ps.EASGD(peroid=4)`` on every rank, before init;
* ``strategy-mode``: ``hvd_ps.ModelAverage(mode='async')`` on every rank, after init;
* ``trainer-argument``: ``DistributedTrainer(..., wire='int16')`` on every rank;
* ``evaluate-on-rank-0``: groups of 2, EASGD(period=2); after two steps global rank 0 alone
  enters ``with trainer.global_model():`` (the Horovod habit) while the others train on.
"""

import sys

import hvd_ps

case = sys.argv[1]
if case == "hvd-init-first":
    import horovod.mxnet as hvd

    hvd.init()
    hvd_ps.init(groups=[[0], [1]])
elif case == "bad-layout":
    hvd_ps.init(group_size=3)
elif case == "unreachable-tier":
    hvd_ps.init()
elif case == "nan-one-group":
    import horovod.mxnet as hvd
    import job_kit

    hvd_ps.init(group_size=2)
    net = job_kit.reference_net(prefix="job_")
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": 0.1}, sync=hvd_ps.ModelAverage(period=1)
    )
    for t in range(1, 6):
        if t == 2 and hvd_ps.group_id() == 1:
            net.weight.data()[0, 0] = float("nan")
        job_kit.step(net, trainer, hvd.rank(), t)
elif case == "strategy-typo-before-init":
    hvd_ps.EASGD(peroid=4)
elif case == "strategy-mode":
    hvd_ps.init(group_size=2)
    hvd_ps.ModelAverage(mode="async")
elif case == "trainer-argument":
    import job_kit

    hvd_ps.init(group_size=2)
    net = job_kit.reference_net(prefix="job_")
    hvd_ps.DistributedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, wire="int16")
elif case == "evaluate-on-rank-0":
    import horovod.mxnet as hvd
    import job_kit

    hvd_ps.init(group_size=2)
    net = job_kit.reference_net(prefix="job_")
    hvd_ps.broadcast_parameters(net.collect_params())
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": 0.1}, sync=hvd_ps.EASGD(period=2)
    )
    for t in range(1, 7):
        job_kit.step(net, trainer, hvd.rank(), t)
        if t == 2 and hvd.rank() == 0:
            with trainer.global_model():
                pass
else:
    raise SystemExit(f"unknown case {case}")
print("NOT REFUSED", flush=True)
hvd_ps.shutdown()
