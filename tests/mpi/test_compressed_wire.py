"""The compressed wire (int8, int4), run for real, equals its float32 numpy reference bit for
bit: every rank's parameters after every step, and the servers' state at the end
(tests/wire_reference.py), for every sync strategy, blocking and overlapped, and for the async
ones with the groups taking their turns in a fixed order.

Every rank's gradient is :func:`wire_reference.grad32` of its own parameters, made Gluon's by a
loss ``sum(p * g)`` (whose gradient is exactly ``g``), so the run and the reference do the same
float32 operations in the same order; groups of one or two ranks keep the group's sum exact.
Needs sessions of their own with ``HVD_PS_WIRE_DTYPE=int8`` or ``int4``, sync or async
(scripts/test.sh runs them); elsewhere it skips.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402
import wire_reference as wref  # noqa: E402
from dense_model import reference_net  # noqa: E402
from strategy_spec import strategy  # noqa: E402

LR = 0.1
DILOCO = {"name": "DiLoCo", "period": 3, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True}
CASES = {
    "GradientPush": ({"name": "GradientPush"}, 5),
    "ModelAverage": ({"name": "ModelAverage", "period": 2}, 8),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.2}, 8),
    "DiLoCo": (DILOCO, 9),
    "DiLoCo-heavy-ball": (
        {"name": "DiLoCo", "period": 2, "outer_lr": 0.5, "momentum": 0.8, "nesterov": False},
        6,
    ),
    "ModelAverage-overlap": ({"name": "ModelAverage", "period": 3, "overlap": 2}, 9),
    "EASGD-overlap": ({"name": "EASGD", "period": 3, "alpha": 0.2, "overlap": 1}, 8),
    "DiLoCo-overlap": (dict(DILOCO, overlap=2), 8),
}


ASYNC_CASES = {
    "GradientPush": ({"name": "GradientPush"}, 5),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.3}, 6),
    "DiLoCo": (dict(DILOCO, period=2), 8),
    "EASGD-overlap": ({"name": "EASGD", "period": 3, "alpha": 0.3, "overlap": 2}, 8),
    "DiLoCo-overlap": (dict(DILOCO, overlap=1), 10),
}


def _client(rt, mode):
    wire = rt.cfg.settings.wire_dtype
    if wire not in ("int8", "int4") or os.environ.get("HVD_PS_TEST_MODE", "sync") != mode:
        pytest.skip(f"needs a {mode} session with HVD_PS_WIRE_DTYPE=int8 or int4")
    if any(len(members) > 2 for members in rt.topo.groups):
        pytest.skip("a group of more than two ranks sums its gradients in Horovod's order")
    if rt.client is not None:
        rt.client.set_mode(mode, rounds=False)
    return rt.client


@pytest.fixture(scope="module")
def wire_client(rt):
    """This rank's PS client on a compressed sync tier (None on non-leaders)."""
    return _client(rt, "sync")


@pytest.fixture(scope="module")
def async_wire_client(rt):
    """This rank's PS client on a compressed async tier (None on non-leaders)."""
    return _client(rt, "async")


def _step(net, trainer, rank, t):
    """One step with this rank's reference gradient (a loss ``sum(p * g)``)."""
    import mxnet as mx

    w, b = net.weight.data().asnumpy(), net.bias.data().asnumpy()
    gw, gb = wref.grad32(w, b, rank, t)
    with mx.autograd.record():
        loss = (net.weight.data() * mx.nd.array(gw)).sum()
        loss = loss + (net.bias.data() * mx.nd.array(gb)).sum()
    loss.backward()
    trainer.step(1)


def _step_in_turns(rt, net, trainer, t, tag):
    """Step ``t`` with the groups taking their turns in group order: each group's step (its
    push, and the pull of the servers' reply) is done before a barrier of all ranks lets the
    next group step."""
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps

    for turn in range(rt.topo.num_groups):
        if turn == hvd_ps.group_id():
            _step(net, trainer, hvd.rank(), t)
        mx.nd.waitall()
        hvd.allreduce(mx.nd.zeros((1,)), name=f"{tag}.{t}.{turn}").wait_to_read()


def _bounds(rt, size):
    from hvd_ps.ps import protocol

    s = rt.cfg.settings
    bits = protocol.WIRE_BITS[s.wire_dtype]
    limit = protocol.shard_limit(bits, s.wire_block, s.kvstore_bound)
    cut = protocol.shards(size, s.wire_block, limit, s.num_servers)
    return bits, [0] + [hi for _, hi in cut]


def _flat(net):
    return wref.flat(net.weight.data().asnumpy(), net.bias.data().asnumpy())


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(CASES))
def test_compressed_wire_matches_numpy_reference_bit_for_bit(rt, wire_client, case):
    import horovod.mxnet as hvd

    import hvd_ps

    spec, steps = CASES[case]
    groups = [list(m) for m in rt.topo.groups]
    bits, bounds = _bounds(rt, ref.OUT * ref.IN + ref.OUT)
    block = rt.cfg.settings.wire_block
    want = wref.run(spec, groups, steps, LR, bits, block, bounds)
    net = reference_net(f"wire_{case.replace('-', '_')}")
    hvd_ps.broadcast_parameters(net.collect_params())
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=strategy(spec)
    )
    gid = hvd_ps.group_id()
    before = trainer.stats()  # the client's counters are the job's, over every trainer
    for t in range(1, steps + 1):
        _step(net, trainer, hvd.rank(), t)
        got = _flat(net)
        np.testing.assert_array_equal(got, want[t - 1]["x"][gid], err_msg=f"{case}, step {t}")
    with trainer.global_model():
        np.testing.assert_array_equal(_flat(net), want[-1]["global"], err_msg=f"{case}: global")
    np.testing.assert_array_equal(_flat(net), want[-1]["final"][gid], err_msg=f"{case}: final")
    after = trainer.stats()
    pushed = after["bytes_pushed"] - before["bytes_pushed"]
    pulled = after["bytes_pulled"] - before["bytes_pulled"]
    if hvd_ps.is_leader():
        from hvd_ps.ps import protocol

        pushes = steps if spec["name"] == "GradientPush" else steps // spec["period"]
        part = sum(protocol.part_bytes(hi - lo, bits, block) for lo, hi in zip(bounds, bounds[1:]))
        # what crossed: every exchange's parts both ways, plus float32 states: global_model()'s
        # (pushed to ask for it, then pulled) and the set-up's (one leader adopts x0)
        state_bytes = 3 * 4 * (ref.OUT * ref.IN + ref.OUT)
        assert pushed >= pushes * part and pulled >= pushes * part
        assert pushed + pulled <= 2 * pushes * part + state_bytes


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(ASYNC_CASES))
def test_async_compressed_wire_matches_numpy_reference_bit_for_bit(rt, async_wire_client, case):
    """Async: the groups take their turns in group order at every step (each leader's
    exchange, its reply included, done before a barrier of all ranks lets the next group
    step), so the servers see the reference's order of pushes."""

    import hvd_ps

    spec, steps = ASYNC_CASES[case]
    groups = [list(m) for m in rt.topo.groups]
    bits, bounds = _bounds(rt, ref.OUT * ref.IN + ref.OUT)
    want = wref.run_async(spec, groups, steps, LR, bits, rt.cfg.settings.wire_block, bounds)
    net = reference_net(f"awire_{case.replace('-', '_')}")
    hvd_ps.broadcast_parameters(net.collect_params())
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=strategy(spec, "async")
    )
    with trainer.global_model():  # the set-up (collective over all ranks) first
        pass
    gid = hvd_ps.group_id()
    for t in range(1, steps + 1):
        _step_in_turns(rt, net, trainer, t, f"awire.{case}")
        got = _flat(net)
        np.testing.assert_array_equal(got, want[t - 1]["x"][gid], err_msg=f"{case}, step {t}")
    with trainer.global_model():
        np.testing.assert_array_equal(_flat(net), want[-1]["global"], err_msg=f"{case}: global")
    np.testing.assert_array_equal(_flat(net), want[-1]["final"][gid], err_msg=f"{case}: final")


#: quorum runs: spec, steps, the exchange the last group misses (its round closes without it)
QUORUM_CASES = {
    "DiLoCo": (dict(DILOCO, period=2), 8, 2),
    "EASGD": ({"name": "EASGD", "period": 2, "alpha": 0.2}, 8, 2),
    "ModelAverage-overlap": ({"name": "ModelAverage", "period": 3, "overlap": 2}, 9, 2),
    "GradientPush": ({"name": "GradientPush"}, 5, 2),
}
#: the quorum runs' grace: every group reaches a round within it, but the held one
GRACE = 2.0


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", list(QUORUM_CASES))
def test_a_quorum_round_closes_without_the_held_group_and_its_push_joins_the_next(
    rt, wire_client, case
):
    """``quorum = G - 1``: the last group is held (at a barrier of all ranks) before its push
    of exchange ``late`` until the others' round closed without it (after the grace), and the
    others then until its exchange is complete: its push joins the next round, and it takes
    the state as of the rounds closed (the others are ahead: it does not wait). From then on
    its exchange ``k`` joins round ``k + 1``, its last one a round of its own, closed once
    the others are done; when each exchange was answered depends on timing, and each
    leader's record of it goes into the reference. The rounds every leader
    saw are those (:func:`wire_reference.quorum_rounds`), and every group's parameters after
    every step, its final ones and the servers' state equal
    :func:`wire_reference.run_quorum`'s for them, bit for bit; only the held group is late."""
    import horovod.mxnet as hvd

    import hvd_ps

    groups = [list(m) for m in rt.topo.groups]
    if len(groups) < 2:
        pytest.skip("a quorum needs two groups or more")
    spec, steps, late = QUORUM_CASES[case]
    spec = dict(spec, quorum=len(groups) - 1, grace=GRACE)
    period = spec.get("period", 1)
    net = reference_net(f"quorum_{case.replace('-', '_')}")
    hvd_ps.broadcast_parameters(net.collect_params())
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=strategy(spec)
    )
    with trainer.global_model():  # the set-up (collective over all ranks) first
        pass
    gid = hvd_ps.group_id()
    held = gid == len(groups) - 1
    hold = f"quorum.{case}.hold"
    got = []
    for t in range(1, steps + 1):
        if held and t == late * period:
            _barrier(hold)  # until the others' round closed without this group
        _step(net, trainer, hvd.rank(), t)
        if t == late * period + spec.get("overlap", 0):
            if not held:  # this group's exchange ``late`` is complete: its round closed
                _barrier(hold)
            _barrier(f"{hold}.late")  # the others report no more until the held one did
        got.append(_flat(net))
    rt.in_flight.complete_all("the end of training")  # as hvd_ps.shutdown does, then done:
    stats = trainer.stats()
    mine = None
    if hvd_ps.is_leader():
        mine = (gid, rt.client.quorums[-1].history)
        rt.client.finish()  # the held group's last round closes without the others
    seen = [m for m in hvd.allgather_object(mine, name=f"quorum.{case}.seen") if m is not None]
    rounds: dict = {}
    answered = {}
    for g, history in seen:
        for seq, joined, answer in history:
            rounds.setdefault(joined, {})[g] = seq
            answered[(g, seq)] = answer
    expected = wref.quorum_rounds(len(groups), steps // period, late)
    bits, bounds = _bounds(rt, ref.OUT * ref.IN + ref.OUT)
    want = wref.run_quorum(
        spec, groups, steps, LR, bits, rt.cfg.settings.wire_block, bounds, expected, answered
    )
    _barrier(f"quorum.{case}.done")  # every group done: the servers applied the last round
    with trainer.global_model():
        global_ = _flat(net)
    # every collective is done: a failure below cannot leave another rank waiting
    record = f"each leader's (seq, round, rounds applied per shard): {seen}"
    assert [rounds.get(r) for r in range(1, len(expected) + 1)] == expected, record
    assert set(answered[(len(groups) - 1, late)]) == {late}, record  # before its round
    for t, x in enumerate(got, start=1):
        np.testing.assert_array_equal(x, want["x"][gid][t - 1], err_msg=f"step {t}; {record}")
    np.testing.assert_array_equal(global_, want["global"], err_msg=f"global; {record}")
    np.testing.assert_array_equal(_flat(net), want["final"][gid], err_msg=f"final; {record}")
    if hvd_ps.is_leader():
        assert (stats["late_pushes"] >= 1) == held, stats
        if not held:  # the round it held closed after the grace, not before
            assert stats["quorum_wait_s"] >= GRACE * 0.9, stats


def _barrier(tag):
    import horovod.mxnet as hvd
    import mxnet as mx

    mx.nd.waitall()
    hvd.allreduce(mx.nd.zeros((1,)), name=tag).wait_to_read()


RESUME = {  # case: the step after which the run saves (overlapped: with an exchange in flight)
    "GradientPush": 2,
    "ModelAverage": 4,
    "EASGD": 3,
    "DiLoCo": 4,
    "ModelAverage-overlap": 4,
    "EASGD-overlap": 4,
    "DiLoCo-overlap": 4,
}


def _shared_path(tag):
    import tempfile

    import horovod.mxnet as hvd

    folder = tempfile.mkdtemp(prefix="hvd_ps-wire-") if hvd.rank() == 0 else None
    folder = hvd.broadcast_object(folder, root_rank=0, name=f"wire.dir.{tag}")
    return os.path.join(folder, f"{tag}.hvdps")


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(RESUME))
def test_a_resumed_compressed_run_equals_the_uninterrupted_one(rt, wire_client, case):
    """Save after step k (with an overlapped exchange in flight), go on in the same job (the
    save changes nothing), and resume a new trainer from the file: both equal the
    uninterrupted reference bit for bit, residuals, copies and servers' state included."""
    import horovod.mxnet as hvd

    import hvd_ps

    spec, steps = CASES[case]
    k = RESUME[case]
    groups = [list(m) for m in rt.topo.groups]
    bits, bounds = _bounds(rt, ref.OUT * ref.IN + ref.OUT)
    want = wref.run(spec, groups, steps, LR, bits, rt.cfg.settings.wire_block, bounds)
    gid, tag = hvd_ps.group_id(), f"rwire_{case.replace('-', '_')}"
    path = _shared_path(tag)
    for resumed in (False, True):
        net, trainer = _resume_trainer(tag, spec, "sync", path, resumed)
        for t in range(k + 1 if resumed else 1, steps + 1):
            _step(net, trainer, hvd.rank(), t)
            if t == k and not resumed:
                trainer.save_checkpoint(path)
            what = f"{case}, {'resumed' if resumed else 'saved and went on'}, step {t}"
            np.testing.assert_array_equal(_flat(net), want[t - 1]["x"][gid], err_msg=what)
        with trainer.global_model():
            np.testing.assert_array_equal(_flat(net), want[-1]["global"], err_msg=f"{case}")


def _resume_trainer(tag, spec, mode, path, resumed):
    """A resume test's model and trainer: loaded from ``path`` (from shifted parameters: only
    the checkpoint is right), or broadcast and set up (async: the set-up, collective over all
    ranks, before the groups take turns)."""
    import hvd_ps

    net = reference_net(tag, shifted=resumed)
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=strategy(spec, mode)
    )
    if resumed:
        trainer.load_checkpoint(path)
        return net, trainer
    hvd_ps.broadcast_parameters(net.collect_params())
    if mode == "async":
        with trainer.global_model():
            pass
    return net, trainer


#: quorum runs saved once the held group's late exchange is done: spec, steps, that exchange
QUORUM_RESUME = {
    "DiLoCo": (dict(DILOCO, period=2), 8, 2),
    "ModelAverage-overlap": ({"name": "ModelAverage", "period": 3, "overlap": 2}, 12, 2),
    "GradientPush": ({"name": "GradientPush"}, 5, 2),
}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", list(QUORUM_RESUME))
def test_a_quorum_checkpoint_holds_the_late_push_and_a_resumed_run_equals_the_one_that_went_on(
    rt, wire_client, case
):
    """``quorum = G - 1``, the last group held until its exchange ``late`` is late (as in the
    quorum test above), then a checkpoint: the save closes the open round (the late push
    alone) and the servers apply it, so the file holds every push. The run that saved goes
    on, every later exchange in one round of every group; each group's parameters after every
    step and the servers' state equal :func:`wire_reference.run_quorum`'s for those rounds,
    bit for bit, and a new trainer resumed from the file equals that run step for step."""
    import horovod.mxnet as hvd

    import hvd_ps

    groups = [list(m) for m in rt.topo.groups]
    if len(groups) < 2:
        pytest.skip("a quorum needs two groups or more")
    spec, steps, late = QUORUM_RESUME[case]
    spec = dict(spec, quorum=len(groups) - 1, grace=GRACE)
    period, overlap = spec.get("period", 1), spec.get("overlap", 0)
    k = late * period + overlap  # the save: the late exchange done, none in flight
    gid, held = hvd_ps.group_id(), hvd_ps.group_id() == len(groups) - 1
    tag = f"rquorum_{case.replace('-', '_')}"
    path = _shared_path(tag)
    hold = f"{tag}.hold"
    got, seen, globals_ = {}, [], {}
    for resumed in (False, True):
        net, trainer = _resume_trainer(tag, spec, "sync", path, resumed)
        if not resumed:
            with trainer.global_model():  # the set-up (collective over all ranks) first
                pass
        for t in range(k + 1 if resumed else 1, steps + 1):
            if held and t == late * period and not resumed:
                _barrier(hold)  # until the others' round closed without this group
            _step(net, trainer, hvd.rank(), t)
            if t == k and not resumed:
                if not held:  # this group's exchange ``late`` is complete: its round closed
                    _barrier(hold)
                _barrier(f"{hold}.late")  # the others report no more until the held one did
                trainer.save_checkpoint(path)
            got[(resumed, t)] = _flat(net)
        rt.in_flight.complete_all("the end of training")
        if not resumed:
            mine = (gid, rt.client.quorums[-1].history) if hvd_ps.is_leader() else None
            seen = [m for m in hvd.allgather_object(mine, name=f"{tag}.seen") if m is not None]
        _barrier(f"{tag}.{resumed}.done")
        with trainer.global_model():
            globals_[resumed] = _flat(net)
    answered = {(g, seq): answer for g, history in seen for seq, _, answer in history}
    expected = wref.quorum_rounds_flushed(len(groups), steps // period, late)
    bits, bounds = _bounds(rt, ref.OUT * ref.IN + ref.OUT)
    want = wref.run_quorum(
        spec, groups, steps, LR, bits, rt.cfg.settings.wire_block, bounds, expected, answered
    )
    rounds: dict = {}
    for g, history in seen:
        for seq, joined, _ in history:
            rounds.setdefault(joined, {})[g] = seq
    # every collective is done: a failure below cannot leave another rank waiting
    record = f"each leader's (seq, round, rounds applied per shard): {seen}"
    assert [rounds.get(r) for r in range(1, len(expected) + 1)] == expected, record
    for t in range(1, steps + 1):
        np.testing.assert_array_equal(
            got[(False, t)], want["x"][gid][t - 1], err_msg=f"step {t}; {record}"
        )
        if t > k:
            np.testing.assert_array_equal(got[(True, t)], got[(False, t)], err_msg=f"resumed {t}")
    for resumed in (False, True):
        np.testing.assert_array_equal(globals_[resumed], want["global"], err_msg=f"{resumed}")


ASYNC_RESUME = {"GradientPush": 2, "EASGD": 4, "DiLoCo": 4, "EASGD-overlap": 4, "DiLoCo-overlap": 5}


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", list(ASYNC_RESUME))
def test_a_resumed_async_compressed_run_equals_the_uninterrupted_one(rt, async_wire_client, case):
    """As the sync test, in async mode with the groups taking their turns (per-group shadows
    and sequences, delayed Nesterov's cycle, an exchange in flight)."""

    import hvd_ps

    spec, steps = ASYNC_CASES[case]
    k = ASYNC_RESUME[case]
    groups = [list(m) for m in rt.topo.groups]
    bits, bounds = _bounds(rt, ref.OUT * ref.IN + ref.OUT)
    want = wref.run_async(spec, groups, steps, LR, bits, rt.cfg.settings.wire_block, bounds)
    gid, tag = hvd_ps.group_id(), f"rawire_{case.replace('-', '_')}"
    path = _shared_path(tag)
    for resumed in (False, True):
        net, trainer = _resume_trainer(tag, spec, "async", path, resumed)
        for t in range(k + 1 if resumed else 1, steps + 1):
            _step_in_turns(rt, net, trainer, t, f"rawire.{case}.{resumed}")
            if t == k and not resumed:
                trainer.save_checkpoint(path)
            what = f"{case}, {'resumed' if resumed else 'saved and went on'}, step {t}"
            np.testing.assert_array_equal(_flat(net), want[t - 1]["x"][gid], err_msg=what)
        with trainer.global_model():
            np.testing.assert_array_equal(_flat(net), want[-1]["global"], err_msg=f"{case}")


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("overlap", [0, 1])
def test_nan_is_refused_before_anything_is_pushed(rt, wire_client, overlap):
    """A NaN in the parameters fails the step on every rank with NonFiniteError, and nothing
    reaches the servers: their state is still the one of the exchange before."""
    import horovod.mxnet as hvd

    import hvd_ps
    from hvd_ps.errors import NonFiniteError

    tag = f"nanwire{overlap}"
    net = reference_net(tag)
    hvd_ps.broadcast_parameters(net.collect_params())
    sync = hvd_ps.ModelAverage(period=2, overlap=overlap)
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=sync
    )
    for t in (1, 2):
        _step(net, trainer, hvd.rank(), t)
    with trainer.global_model():
        before = _flat(net)
    _step(net, trainer, hvd.rank(), 3)
    net.weight.data()[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        _step(net, trainer, hvd.rank(), 4)
        if overlap:
            _step(net, trainer, hvd.rank(), 5)
    with trainer.global_model():  # what the servers hold: still exchange 1's average
        np.testing.assert_array_equal(_flat(net), before)
    assert np.all(np.isfinite(before))


@pytest.mark.mpi(min_size=1)
def test_the_trainers_wire_argument_wins_over_the_environment(rt, wire_client):
    """``DistributedTrainer(wire=)`` with the other compressed format than the session's
    ``HVD_PS_WIRE_DTYPE``: the run follows the argument's format, bit for bit."""
    import horovod.mxnet as hvd

    import hvd_ps
    from hvd_ps.ps import protocol

    other = "int4" if rt.cfg.settings.wire_dtype == "int8" else "int8"
    spec, steps = CASES["DiLoCo"]
    s = rt.cfg.settings
    bits = protocol.WIRE_BITS[other]
    limit = protocol.shard_limit(bits, s.wire_block, s.kvstore_bound)
    cut = protocol.shards(ref.OUT * ref.IN + ref.OUT, s.wire_block, limit, s.num_servers)
    bounds = [0] + [hi for _, hi in cut]
    groups = [list(m) for m in rt.topo.groups]
    want = wref.run(spec, groups, steps, LR, bits, s.wire_block, bounds)
    net = reference_net(f"wirearg_{other}")
    hvd_ps.broadcast_parameters(net.collect_params())
    trainer = hvd_ps.DistributedTrainer(
        net.collect_params(), "sgd", {"learning_rate": LR}, sync=strategy(spec), wire=other
    )
    for t in range(1, steps + 1):
        _step(net, trainer, hvd.rank(), t)
        np.testing.assert_array_equal(_flat(net), want[t - 1]["x"][hvd_ps.group_id()])
