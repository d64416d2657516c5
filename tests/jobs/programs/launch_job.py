"""Job run by tests/jobs/test_launch.py under hvdps-run: one group per rank, leaders use the PS
tier.

``python launch_job.py [ROUNDS] [PAUSE] [EXIT_CODE] [TOKEN]``: every leader pushes
``(global group id + 1) * (round + 1)`` to one sync key with the ``assign`` updater, so each round
pulls the sum over all leaders of the tier, and prints it; then exits with ``EXIT_CODE``.
``TOKEN`` is unused: it marks the ranks' command lines, so a test can check none is left.
"""

import sys
import time

import horovod.mxnet as hvd
import mxnet as mx
from job_kit import say  # noqa: E402  (one write per line)

import hvd_ps
from hvd_ps.ps import protocol
from hvd_ps.train import runtime

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
exit_code = int(sys.argv[3]) if len(sys.argv) > 3 else 0

hvd_ps.init(group_size=1)
rank = hvd.rank()
client = runtime.runtime().client
assert client is not None
client.set_mode("sync")
key = client.register("launch_job", mx.nd.zeros((4,)), protocol.Assign())
out = mx.nd.zeros((4,))
for r in range(rounds):
    client.exchange(key, mx.nd.ones((4,)) * (hvd_ps.global_group_id() + 1) * (r + 1), out)
    say(f"rank {rank} round {r} value {out.asnumpy()[0]:g}")
    time.sleep(pause)
hvd_ps.shutdown()
say(f"rank {rank} done")
sys.exit(exit_code)
