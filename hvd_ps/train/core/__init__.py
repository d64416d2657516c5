"""The training side's core: what a group does with the PS tier, on flat buffers.

The strategies (:mod:`.strategies`) and each one's leader exchange (:mod:`.exchanges`), the fused
buffers (:mod:`.fusion`) split into buckets, the schedule of blocking and overlapped exchanges
(:mod:`.schedule`) and checkpoints of a whole job (:mod:`.resume`). A front end (the Gluon
trainer) drives it.
"""
