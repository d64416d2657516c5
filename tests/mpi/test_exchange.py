"""Sync-mode exchange rounds through the session's embedded PS tier.

Each group's leader pushes values that identify group and round; the pulled value must be
exactly what the round's pushes imply, even with one leader racing ahead while the others
sleep (MXNet's sync server counts pushes rather than one push per leader, so a leader that
pushed twice in a round would mix rounds). Non-leaders take part through the broadcast of the
result to their group.
"""

from __future__ import annotations

import os
import pickle
import time

import mxnet as mx
import numpy as np
import pytest

import hvd_ps
from hvd_ps.ps import protocol

pytestmark = pytest.mark.mpi(min_size=1)

N = 1000
ROUNDS = 12


def pushed(gid, rnd):
    """What group ``gid``'s leader pushes in round ``rnd`` (exact small integers in float32)."""
    return (gid + 1) + 100.0 * rnd + np.arange(N, dtype=np.float32) * (gid + 1)


def lag(gid, rnd):
    """Group 0's leader never waits; the others sleep on some rounds, so it races ahead."""
    if gid > 0 and (rnd + gid) % 3 == 0:
        time.sleep(0.03)


def to_group(value, name):
    """The leader's ``value`` on every member of its group (how a result reaches non-leaders)."""
    import horovod.mxnet as hvd

    members = hvd_ps.groups()[hvd_ps.group_id()]
    x = value if value is not None else mx.nd.zeros((N,))
    return hvd.broadcast(x, root_rank=members[0], name=name, process_set=hvd_ps.group()).asnumpy()


def test_assign_round_is_the_sum_of_its_pushes(sync_client):
    G = hvd_ps.num_groups()
    rounds = []
    if sync_client is not None:
        key = sync_client.register("test.assign", mx.nd.zeros((N,)), protocol.Assign())
        out = mx.nd.zeros((N,))
        for rnd in range(ROUNDS):
            lag(hvd_ps.group_id(), rnd)
            sync_client.exchange(key, mx.nd.array(pushed(hvd_ps.group_id(), rnd)), out)
            rounds.append(out.asnumpy().copy())
        assert sync_client.stats.exchanges >= ROUNDS
    last = to_group(mx.nd.array(rounds[-1]) if rounds else None, "test.exchange.assign")
    expect = [sum(pushed(g, rnd) for g in range(G)) for rnd in range(ROUNDS)]
    for rnd, got in enumerate(rounds):
        np.testing.assert_array_equal(got, expect[rnd], err_msg=f"round {rnd}")
    np.testing.assert_array_equal(last, expect[-1])


def test_add_accumulates_over_rounds(sync_client):
    G = hvd_ps.num_groups()
    initial = 5.0 + np.arange(N, dtype=np.float32)
    rounds = []
    if sync_client is not None:
        key = sync_client.register("test.add", mx.nd.array(initial), protocol.Add())
        out = mx.nd.zeros((N,))
        sync_client.exchange(key, None, out)  # pull only: the initial value
        np.testing.assert_array_equal(out.asnumpy(), initial)
        for rnd in range(ROUNDS):
            lag(hvd_ps.group_id(), rnd)
            sync_client.exchange(key, mx.nd.array(pushed(hvd_ps.group_id(), rnd)), out)
            rounds.append(out.asnumpy().copy())
        sync_client.exchange(key, None, out)  # pull only: the final value, no new round
        rounds.append(out.asnumpy().copy())
    last = to_group(mx.nd.array(rounds[-1]) if rounds else None, "test.exchange.add")
    expect, total = [], initial.copy()
    for rnd in range(ROUNDS):
        total = total + sum(pushed(g, rnd) for g in range(G))
        expect.append(total)
    for rnd, got in enumerate(rounds):
        np.testing.assert_array_equal(got, expect[min(rnd, ROUNDS - 1)], err_msg=f"round {rnd}")
    np.testing.assert_array_equal(last, expect[-1])


def test_nesterov_round_uses_the_mean_of_the_round(sync_client):
    G = hvd_ps.num_groups()
    lr, m = 0.5, 0.9
    w0 = np.linspace(-1, 1, N).astype(np.float32)
    got = []
    if sync_client is not None:
        rule = protocol.Nesterov(lr=lr, momentum=m, nesterov=True, scale=1.0 / G)
        key = sync_client.register("test.nesterov", mx.nd.array(w0), rule)
        out = mx.nd.zeros((N,))
        for rnd in range(4):
            lag(hvd_ps.group_id(), rnd)
            g = np.full(N, float(hvd_ps.group_id() + 1 + rnd), np.float32)
            sync_client.exchange(key, mx.nd.array(g), out)
            got.append(out.asnumpy().copy())
    w, v = w0.astype(np.float64), np.zeros(N)
    for rnd, value in enumerate(got):
        d = np.mean([g + 1 + rnd for g in range(G)])
        v = m * v + d
        w = w - lr * (d + m * v)
        np.testing.assert_allclose(value, w, rtol=1e-5, atol=1e-5, err_msg=f"round {rnd}")


class EvilSGD(mx.optimizer.SGD):
    """An optimizer whose unpickling runs a shell command (what MXNet's stock server does)."""

    path = "/nonexistent"

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Payload:
    """A pickle that calls ``fn(*args)`` when loaded."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def payloads(path):
    """Protocol-0 pickles (what kv.set_optimizer sends) that create ``path`` when loaded."""
    import builtins
    import subprocess

    EvilSGD.path = path
    return [
        pickle.dumps(_Payload(os.system, f"touch {path}"), 0),
        pickle.dumps(_Payload(builtins.eval, f"open({path!r}, 'w').close()"), 0),
        pickle.dumps(_Payload(subprocess.call, ["touch", path]), 0),
        pickle.dumps(EvilSGD(), 0),
    ]


def test_server_rejects_pickled_optimizer_and_keeps_serving(sync_client, tmp_path_factory):
    import horovod.mxnet as hvd

    G = hvd_ps.num_groups()
    path = None
    if hvd.rank() == 0:
        d = tmp_path_factory.mktemp("pickle")
        path = str(d / "pwned")
        control = str(d / "control")
        for body in payloads(control):  # each payload does run when unpickled
            pickle.loads(body)
            assert os.path.exists(control)
            os.unlink(control)
    path = hvd.broadcast_object(path, root_rank=0, name="test.exchange.pickle_path")
    EvilSGD.path = path
    got = None
    if sync_client is not None:
        key = sync_client.register("test.after_pickle", mx.nd.zeros((N,)), protocol.Assign())
        if hvd.rank() == 0:
            # what a client sends with kv.set_optimizer: a pickle, as command 0, to every server
            sync_client.kv.set_optimizer(EvilSGD(learning_rate=0.1))
            for body in payloads(path):
                sync_client.kv._send_command_to_servers(0, body.decode("latin1"))
        out = mx.nd.zeros((N,))
        sync_client.exchange(key, mx.nd.array(pushed(hvd_ps.group_id(), 7)), out)
        got = out.asnumpy()
    hvd_ps.train.runtime.barrier("pickle test done")
    assert not os.path.exists(path)
    if got is not None:  # hvd_ps's own keys (each has a rule) are still served exactly
        np.testing.assert_array_equal(got, sum(pushed(g, 7) for g in range(G)))


def test_stats_count_bytes(sync_client):
    if sync_client is None:
        pytest.skip("not a leader")
    before = sync_client.stats.as_dict()
    key = sync_client.register("test.stats", mx.nd.zeros((N,)), protocol.Assign())
    out = mx.nd.zeros((N,))
    sync_client.exchange(key, mx.nd.ones((N,)), out)
    after = sync_client.stats.as_dict()
    assert after["exchanges"] == before["exchanges"] + 1
    assert after["bytes_pushed"] == before["bytes_pushed"] + 4 * N
    assert after["bytes_pulled"] == before["bytes_pulled"] + 4 * N
    np.testing.assert_array_equal(out.asnumpy(), np.full(N, hvd_ps.num_groups(), np.float32))


def test_first_use_of_a_key_may_be_a_queued_pull_then_a_push(sync_client):
    """A fresh key whose first use is a pull still queued when its first push comes.

    That is EASGD's exchange (pull c, push d, one wait). In MXNet 1.9.1 both fill the key's
    server-mapping cache at once on a leader other than ps-lite's rank 0 unless the key was
    used before; the next pull then aborted the process (Check failed: lens->size() ==
    keys.size()) or a server (req_data.keys.size() == 1). Client.register pulls every new key
    once to rule that out; 200 fresh keys reproduced the abort on every 4-leader run without it.
    """
    if sync_client is None:
        return
    G = hvd_ps.num_groups()
    for i in range(200):
        key = sync_client.register(f"test.first_use.{i}", mx.nd.full((10,), 2.0), protocol.Add())
        pulled = mx.nd.zeros((10,))
        sync_client.exchange(key, None, pulled, wait=False)
        # computed from the pull (as EASGD's d is), so the engine pushes it after the pull
        sync_client.push(key, pulled * 0 + float(hvd_ps.group_id() + 1))
        sync_client.wait([pulled], f"first use of key {key}")
        np.testing.assert_array_equal(pulled.asnumpy(), np.full(10, 2.0, np.float32))
        sync_client.exchange(key, None, pulled)  # ordered after the round of pushes
        want = 2.0 + G * (G + 1) / 2
        np.testing.assert_array_equal(pulled.asnumpy(), np.full(10, want, np.float32))
