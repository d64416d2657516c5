"""What runs in a training rank: ``hvd_ps.init`` (:mod:`.runtime`), the framework-neutral core
(:mod:`.core`: strategies, their leader exchanges, buckets, the schedule, checkpoints) and the
Gluon front end (:mod:`.gluon`: ``DistributedTrainer``)."""
