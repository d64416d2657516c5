"""The PS tier: what its processes run and how a leader talks to them.

The wire protocol (:mod:`.protocol`), a leader's client (:mod:`.client`), the servers and their
update rules (:mod:`.server`, :mod:`.rules`), hvd_ps's own ps-lite scheduler (:mod:`.scheduler`),
a shared tier's roster of live groups (:mod:`.roster`), a job's place among the groups of a
shared tier (:mod:`.placement`) and the safe unpickler of a stock worker's optimizer
(:mod:`.stock_optimizer`). Nothing here imports the training side (:mod:`hvd_ps.train`) or the
launcher (:mod:`hvd_ps.launch.cli`).
"""
