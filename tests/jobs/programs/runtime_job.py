"""A small hvd_ps job for tests/jobs/test_runtime_jobs.py:
``python runtime_job.py SCENARIO GROUPS``.

Scenarios (every rank prints ``rank R ...`` lines the test reads; rank 0 prints the tier's
``PIDS {...} PORT p``):

* ``sync``: ROUNDS sync rounds on an ``assign`` key (one leader races ahead, the others
  sleep); every rank checks every round's value; clean shutdown; ``rank R DONE``.
* ``async``: every leader pushes to an ``add`` key ROUNDS times in async mode; after a PS
  barrier a pull gives ``initial + sum of all pushes``; ``rank R DONE``.
* ``kill-server`` / ``kill-scheduler``: like ``sync`` but endless; before round 3 global rank 2
  SIGKILLs the embedded tier's server 0 / scheduler (rank 0 is then mid-exchange).
* ``kill-leader``: like ``sync`` but endless; global rank 2 (a leader) SIGKILLs itself before
  its round 3 push.
* ``bad-groups``: ``hvd_ps.init(groups=GROUPS)`` must raise TopologyError on every rank; then a
  good ``hvd_ps.init(group_size=1)`` must still work (the failed init left nothing behind).
* ``sync-slow-close``: ``sync`` with rank 0 pausing 2 s right after it left the tier (as if
  descheduled); the servers' normal exit must not be reported as a failure.
* ``dead-server-command``: rank 0 stops watching its tier (as with an external tier, which
  nobody watches), the last rank SIGKILLs server 0, then every leader registers a key: the command
  to the servers must time out naming itself, not block for ever.
* ``connect``: init only (for an unreachable external tier: the leaders' connect times out).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

import hvd_ps
from hvd_ps.ps import protocol
from hvd_ps.train import runtime

N = 64
ROUNDS = 8


START = time.monotonic()
RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))


def say(*words):
    line = " ".join(str(w) for w in (f"rank {RANK}",) + words)
    sys.stdout.write(f"{line} [{time.monotonic() - START:.2f} s]\n")  # one write: no mixed lines
    sys.stdout.flush()


def value(gid, rnd):
    return np.full(N, (gid + 1) * 1000.0 + rnd, np.float32)


def tier_pids():
    """Rank 0's tier children ({name: pid}), sent to every rank."""
    rt = runtime.runtime()
    pids = {name: p.pid for name, p in rt.local.procs.items()} if rt.local else None
    if rt.local is not None:
        say("PIDS", json.dumps(pids), "PORT", rt.local.port)
    return hvd.broadcast_object(pids, root_rank=0, name="job.pids")


def rounds(mode, count, before_push=None):
    rt = runtime.runtime()
    c = rt.client
    G = hvd_ps.num_groups()
    gid = hvd_ps.group_id()
    leader = hvd_ps.groups()[gid][0]
    key = None
    if c is not None:
        c.set_mode(mode)
        key = c.register("job", mx.nd.zeros((N,)), protocol.Assign())
    rnd = 0
    while count is None or rnd < count:
        step = hvd.allreduce(
            mx.nd.ones((1,)), average=False, name=f"job.step.{rnd}", process_set=hvd_ps.group()
        )
        assert step.asscalar() == hvd_ps.group_size()
        out = mx.nd.zeros((N,))
        if c is not None:
            if before_push is not None:
                before_push(rnd)
            if gid > 0 and (rnd + gid) % 3 == 0:
                time.sleep(0.05)  # group 0's leader races ahead
            c.exchange(key, mx.nd.array(value(gid, rnd)), out)
        out = hvd.broadcast(out, root_rank=leader, name=f"job.b.{rnd}", process_set=hvd_ps.group())
        expect = sum(value(g, rnd) for g in range(G))
        if not np.array_equal(out.asnumpy(), expect):
            say("WRONG round", rnd, out.asnumpy()[:3], "expected", expect[:3])
            sys.exit(5)
        say("round", rnd, "ok", float(out.asnumpy()[0]))
        rnd += 1


def async_add():
    c = runtime.runtime().client
    initial = np.arange(N, dtype=np.float32)
    if c is not None:
        c.set_mode("async")
        key = c.register("job.async", mx.nd.array(initial), protocol.Add())
        for rnd in range(ROUNDS):
            c.exchange(key, mx.nd.array(value(hvd_ps.group_id(), rnd)), mx.nd.zeros((N,)))
        c.barrier("all pushes done")
        out = mx.nd.zeros((N,))
        c.exchange(key, None, out)
        expect = initial + sum(
            value(g, r) for g in range(hvd_ps.num_groups()) for r in range(ROUNDS)
        )
        if not np.array_equal(out.asnumpy(), expect):
            say("WRONG async", out.asnumpy()[:3], "expected", expect[:3])
            sys.exit(5)
        say("async ok", float(out.asnumpy()[0]))


def main():
    scenario, groups = sys.argv[1], json.loads(sys.argv[2])
    if scenario == "bad-groups":
        try:
            hvd_ps.init(groups=groups)
        except hvd_ps.TopologyError as err:
            say(f"TopologyError: {err}")
        else:
            say("init accepted a bad layout")
            sys.exit(4)
        hvd_ps.init(group_size=1)
        rounds("sync", 2)
        hvd_ps.shutdown()
        say("DONE")
        return
    hvd_ps.init(groups=groups)
    if scenario == "connect":
        say("connected")  # never reached for an unreachable tier
    elif scenario in ("sync", "sync-slow-close"):
        tier_pids()
        rounds("sync", ROUNDS)
        if scenario == "sync-slow-close" and RANK == 0:
            close = runtime.runtime().client.close

            def slow_close():
                close()
                time.sleep(2)

            runtime.runtime().client.close = slow_close
    elif scenario == "async":
        tier_pids()
        async_add()
    elif scenario in ("kill-server", "kill-scheduler"):
        pids = tier_pids()
        victim = "server 0" if scenario == "kill-server" else "scheduler"

        def kill(rnd):
            if RANK == 2 and rnd == 3:
                say("killing", victim, pids[victim])
                os.kill(pids[victim], signal.SIGKILL)

        rounds("sync", None, kill)
    elif scenario == "dead-server-command":
        pids = tier_pids()
        rt = runtime.runtime()
        if rt.local is not None:
            rt.local.stopping = True  # no watch: only the client's own deadlines remain
        runtime.barrier("watch off")
        if RANK == hvd.size() - 1:
            say("killing server 0", pids["server 0"])
            os.kill(pids["server 0"], signal.SIGKILL)
            time.sleep(0.5)
        runtime.barrier("server killed")
        if rt.client is not None:
            rt.client.register("job.after_death", mx.nd.zeros((N,)), protocol.Add())
        say("registered")  # never reached
    elif scenario == "kill-leader":
        tier_pids()

        def die(rnd):
            if RANK == 2 and rnd == 3:
                say("killing myself", os.getpid())
                os.kill(os.getpid(), signal.SIGKILL)

        rounds("sync", None, die)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    say("shutting down")
    hvd_ps.shutdown()
    say("DONE")


if __name__ == "__main__":
    main()
