"""A job that dies of an error, for tests/jobs/test_error_lines.py. Usage: error_job.py SCENARIO

* ``bad-layout``: ``hvd_ps.init(group_size=3)`` on 4 ranks, uncaught (every rank raises it);
* ``one-rank``: after a good init, rank 1 alone raises an hvd_ps ConfigError;
* ``user-error``: after a good init, rank 0 raises a ValueError of the user's own.
"""

from __future__ import annotations

import sys

import hvd_ps

scenario = sys.argv[1]
if scenario == "bad-layout":
    hvd_ps.init(group_size=3)
hvd_ps.init(group_size=2)
import horovod.mxnet as hvd  # noqa: E402

if scenario == "one-rank" and hvd.rank() == 1:
    raise hvd_ps.ConfigError("period=0 must be an integer >= 1 (raised on rank 1 only)")
if scenario == "user-error" and hvd.rank() == 0:
    raise ValueError("a bug in the user's own code")
hvd_ps.shutdown()
