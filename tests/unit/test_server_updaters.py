"""hvd_ps.server.Updaters: the server-side update rules and the command filter (no ps-lite).

A dummy KVStore records the updater the server would install; pushes are simulated by calling
``update(key, received, stored)`` exactly as ps-lite's server does. ``on_fatal`` (which stops
a real server with exit code 4) raises :class:`Fatal` here.
"""

from __future__ import annotations

import json
import os
import pickle

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.ps import protocol
from hvd_ps.ps.protocol import CONTROLLER_HEAD, OPTIMIZERS
from hvd_ps.ps.server import Updaters


class DummyKV:
    def __init__(self):
        self.updaters = []

    def _set_updater(self, fn):
        self.updaters.append(fn)


def cmd(key, updater, params=None, **extra):
    """A command written by hand: to test what a server does with any bytes."""
    msg = {"hvd_ps": 1, "key": key, "updater": updater, "params": params or {}}
    msg.update(extra)
    return json.dumps(msg).encode()


def rec(key, rule):
    """A command as a leader sends it: a record of hvd_ps.ps.protocol, encoded by it."""
    return protocol.Command(key, rule).encode().encode()


class Fatal(Exception):
    pass


def _fatal(message):
    raise Fatal(message)


@pytest.fixture
def up():
    return Updaters(DummyKV(), on_fatal=_fatal)


def nd(a):
    return mx.nd.array(np.asarray(a, dtype=np.float32))


def push(up, key, g, w):
    """Apply ``g`` to the stored array ``w`` through the installed updater, as ps-lite does."""
    up.kv.updaters[-1](key, g, w)
    return w.asnumpy()


def test_installs_once_on_first_valid_command(up):
    assert up.kv.updaters == [] and not up.installed
    up.command(CONTROLLER_HEAD, rec(0, protocol.Assign()))
    up.command(CONTROLLER_HEAD, rec(1, protocol.Add()))
    assert len(up.kv.updaters) == 1 and up.installed
    assert up.kv.updaters[0] == up.update
    assert up.rejected == 0


def test_default_and_assign(up):
    up.command(CONTROLLER_HEAD, rec(0, protocol.Add()))
    w = nd([1, 2, 3])
    # key 7 never got a command: assign (sync: the round's sum)
    np.testing.assert_array_equal(push(up, 7, nd([4, 5, 6]), w), [4, 5, 6])
    up.command(CONTROLLER_HEAD, rec(3, protocol.Assign()))
    np.testing.assert_array_equal(push(up, 3, nd([-1, 0, 9]), w), [-1, 0, 9])


def test_add_accumulates(up):
    up.command(CONTROLLER_HEAD, rec(2, protocol.Add()))
    w = nd([1, 1, 1, 1])
    total = np.ones(4, np.float32)
    for i in range(5):
        g = np.arange(4, dtype=np.float32) * (i + 1)
        total += g
        np.testing.assert_array_equal(push(up, 2, nd(g), w), total)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_nesterov_matches_numpy(up, nesterov, scale):
    lr, m = 0.7, 0.9
    params = {"lr": lr, "momentum": m, "nesterov": nesterov, "scale": scale}
    up.command(CONTROLLER_HEAD, rec(5, protocol.Nesterov(**params)))
    rng = np.random.default_rng(0)
    w_ref = rng.standard_normal(6).astype(np.float32)
    w = nd(w_ref)
    v = np.zeros(6, np.float32)
    for _ in range(6):
        g = rng.standard_normal(6).astype(np.float32)
        d = scale * g
        v = m * v + d
        w_ref = w_ref - lr * (d + m * v) if nesterov else w_ref - lr * v
        np.testing.assert_allclose(push(up, 5, nd(g), w), w_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("groups", [2, 3])
def test_delayed_nesterov_matches_the_numpy_reference(up, nesterov, groups):
    """Async DiLoCo's server rule: each push 1/G of a round, momentum once per G pushes."""
    import reference as ref

    lr, m = 0.7, 0.9
    rule = protocol.Nesterov(lr, m, nesterov, scale=1.0 / groups, delay=groups)
    up.command(CONTROLLER_HEAD, rec(5, rule))
    model = ref.OuterSGD(lr, m, nesterov, 1.0 / groups, groups)
    rng = np.random.default_rng(3)
    w_ref = rng.standard_normal(6)
    w = nd(w_ref)
    for _ in range(4 * groups + 1):
        g = rng.standard_normal(6).astype(np.float32)
        w_ref = model.step(w_ref, g.astype(np.float64))
        np.testing.assert_allclose(push(up, 5, nd(g), w), w_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nesterov", [True, False])
def test_delayed_nesterov_with_equal_pushes_is_one_sync_round(up, nesterov):
    """G equal pushes under the async rule move w exactly as one sync round of them does."""
    lr, m, groups = 0.5, 0.8, 4
    sync = protocol.Nesterov(lr, m, nesterov, scale=1.0 / groups)
    up.command(CONTROLLER_HEAD, rec(0, sync))
    up.command(CONTROLLER_HEAD, rec(1, protocol.Nesterov(lr, m, nesterov, 1.0 / groups, groups)))
    w_sync, w_async = nd([1.0, -2.0]), nd([1.0, -2.0])
    for d in ([0.3, 0.1], [-0.2, 0.4], [0.5, 0.5]):
        push(up, 0, nd(np.float32(groups) * np.float32(d)), w_sync)  # a round's sum
        for _ in range(groups):
            push(up, 1, nd(d), w_async)
        np.testing.assert_allclose(w_async.asnumpy(), w_sync.asnumpy(), rtol=1e-5, atol=1e-6)


def test_delayed_nesterov_state_resumes_mid_cycle(up):
    """A checkpoint taken between two applications of the momentum: v, the sum A and where
    the key stands in its cycle (from the push count) continue exactly on a fresh server."""
    rule = protocol.Nesterov(lr=0.7, momentum=0.9, scale=1 / 3, delay=3)
    assert rule.state_layout() == ("v", "a")
    assert protocol.Nesterov(lr=0.7).state_layout() == ("v",)
    up.command(CONTROLLER_HEAD, rec(0, rule))
    w = nd([0.5, -0.5, 1.0])
    rng = np.random.default_rng(4)
    pushes = [nd(rng.standard_normal(3)) for _ in range(9)]
    for g in pushes[:5]:  # 5 pushes: the momentum applied once, 2 pushes summed in A
        push(up, 0, g, w)
    fresh = Updaters(DummyKV(), on_fatal=_fatal)
    fresh.command(CONTROLLER_HEAD, rec(0, rule))
    for leaf in range(len(rule.state_layout())):  # v, then a
        up.command(CONTROLLER_HEAD, rec(5, protocol.CopyState(source=0, leaf=leaf)))
        value = push(up, 5, nd([0.0] * 3), nd([0.0] * 3))
        assert np.abs(value).max() > 0, leaf
        fresh.command(CONTROLLER_HEAD, rec(5, protocol.CopyState(0, leaf, load=True, count=5)))
        push(fresh, 5, nd([0.0] * 3), nd(value))
    w_fresh = w.copy()
    for g in pushes[5:]:  # the 6th push applies the momentum on both servers
        np.testing.assert_allclose(push(fresh, 0, g, w_fresh), push(up, 0, g, w), rtol=1e-6)


def test_nesterov_with_clip_is_mxnet_nag_and_wd_the_textbook_one(up):
    """Async GradientPush turns sgd/nag into the Nesterov rule. With ``delay = 1`` it is
    MXNet's own ``nag`` push for push (rescale, clip); its weight decay is the textbook one
    (PyTorch's ``SGD(nesterov=True, weight_decay=wd)``: ``wd w`` of the weight before the
    step). MXNet's ``nag_mom_update`` writes the weight in place first and then reads the new
    weight for the momentum's decay term, so there the two differ from the second push on."""
    nag = {"learning_rate": 0.2, "momentum": 0.9, "rescale_grad": 0.5, "clip_gradient": 0.3}
    up.command(CONTROLLER_HEAD, rec(0, protocol.Optimizer("nag", nag)))
    up.command(CONTROLLER_HEAD, rec(1, protocol.Nesterov(0.2, 0.9, True, scale=0.5, clip=0.3)))
    up.command(CONTROLLER_HEAD, rec(2, protocol.Nesterov(0.2, 0.9, True, scale=0.5, wd=0.05)))
    rng = np.random.default_rng(5)
    start = rng.standard_normal(6).astype(np.float32)
    w_mx, w_ours, w_wd = nd(start), nd(start), nd(start)
    w_ref, v = start.astype(np.float64), np.zeros(6)
    for _ in range(5):
        g = rng.standard_normal(6).astype(np.float32) * 2
        np.testing.assert_allclose(
            push(up, 1, nd(g), w_ours), push(up, 0, nd(g), w_mx), rtol=1e-5, atol=1e-6
        )
        d = 0.5 * g + 0.05 * w_ref
        v = 0.9 * v + d
        w_ref = w_ref - 0.2 * (d + 0.9 * v)
        np.testing.assert_allclose(push(up, 2, nd(g), w_wd), w_ref, rtol=1e-5, atol=1e-6)


def test_optimizer_lr_scale_divides_the_learning_rate(up):
    """Async GradientPush: lr / G per push, the gradient itself unscaled (Adam included)."""
    for key, name in enumerate(("sgd", "adam")):
        args = {"learning_rate": 0.1, "wd": 0.01}
        up.command(CONTROLLER_HEAD, rec(key, protocol.Optimizer(name, args, lr_scale=0.25)))
        up.command(
            CONTROLLER_HEAD,
            rec(10 + key, protocol.Optimizer(name, dict(args, learning_rate=0.025))),
        )
        w, w_ref = nd([1.0, -1.0]), nd([1.0, -1.0])
        for g in ([0.3, -0.2], [0.1, 0.4]):
            np.testing.assert_allclose(
                push(up, key, nd(g), w), push(up, 10 + key, nd(g), w_ref), rtol=1e-6
            )


def test_nesterov_state_is_per_key_kept_by_the_same_rule_reset_by_another(up):
    """Every leader sends each key's rule, at its own time (and a rejoining leader again): the
    same rule must keep the servers' state (a checkpoint's, loaded by another leader in
    between, included); only a different rule starts afresh."""
    up.command(CONTROLLER_HEAD, rec(0, protocol.Nesterov(lr=1.0, momentum=0.5)))
    up.command(CONTROLLER_HEAD, rec(1, protocol.Nesterov(lr=1.0, momentum=0.5)))
    w0, w1 = nd([0.0]), nd([0.0])
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-1.5)  # v=1; w -= 1+0.5
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-1.5 - 1.75)  # v=1.5; 1+0.75
    assert push(up, 1, nd([1.0]), w1)[0] == pytest.approx(-1.5)  # key 1 has its own v
    up.command(CONTROLLER_HEAD, rec(0, protocol.Nesterov(lr=1.0, momentum=0.5)))  # again
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-3.25 - 1.875)  # v=1.75 kept
    up.command(CONTROLLER_HEAD, rec(0, protocol.Nesterov(lr=1.0, momentum=0.25)))  # another
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-5.125 - 1.25)  # v restarted at 0


def test_optimizer_sgd_momentum_matches_numpy(up):
    lr, mom, wd, scale = 0.1, 0.9, 0.01, 0.5
    args = {"learning_rate": lr, "momentum": mom, "wd": wd}
    up.command(CONTROLLER_HEAD, rec(4, protocol.Optimizer("sgd", args, scale)))
    rng = np.random.default_rng(1)
    w_ref = rng.standard_normal(8).astype(np.float32)
    w = nd(w_ref)
    state = np.zeros(8, np.float32)
    for _ in range(5):
        g = rng.standard_normal(8).astype(np.float32)
        state = mom * state - lr * wd * w_ref - lr * scale * g
        w_ref = w_ref + state
        np.testing.assert_allclose(push(up, 4, nd(g), w), w_ref, rtol=1e-5, atol=1e-6)


def test_optimizer_nag_matches_numpy(up):
    lr, mom = 0.2, 0.5
    params = {"name": "nag", "args": {"learning_rate": lr, "momentum": mom, "rescale_grad": 2.0}}
    up.command(CONTROLLER_HEAD, rec(9, protocol.Optimizer(**params)))
    w_ref = np.array([1.0, -2.0, 3.0], np.float32)
    w = nd(w_ref)
    v = np.zeros(3, np.float32)
    for g in ([1.0, 1.0, 1.0], [0.5, -1.0, 2.0], [0.0, 3.0, -1.0]):
        d = 2.0 * np.asarray(g, np.float32)  # rescale_grad 2 (scale defaults to 1)
        v = mom * v + d
        w_ref = w_ref - lr * (d + mom * v)
        np.testing.assert_allclose(push(up, 9, nd(g), w), w_ref, rtol=1e-5, atol=1e-6)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


BAD_COMMANDS = [
    (CONTROLLER_HEAD, b"\x80\x04\x95not json"),
    (CONTROLLER_HEAD, b"\xff\xfe"),
    (CONTROLLER_HEAD, b""),
    (CONTROLLER_HEAD, b"[1, 2]"),
    (CONTROLLER_HEAD, b'"assign"'),
    (CONTROLLER_HEAD, json.dumps({"key": 0, "updater": "assign"}).encode()),
    (CONTROLLER_HEAD, json.dumps({"hvd_ps": 2, "key": 0, "updater": "assign"}).encode()),
    (CONTROLLER_HEAD, json.dumps({"hvd_ps": 1, "updater": "assign"}).encode()),
    (CONTROLLER_HEAD, json.dumps({"hvd_ps": 1, "key": 0}).encode()),
    (CONTROLLER_HEAD, cmd("zero", "assign")),
    (CONTROLLER_HEAD, cmd(0, "eval")),
    (CONTROLLER_HEAD, cmd(0, "optimizer", {"name": "test"})),
    (CONTROLLER_HEAD, cmd(0, "optimizer", {"name": "SGD"})),
    (CONTROLLER_HEAD, cmd(0, "optimizer", {"name": "sgd", "args": {"lr_scheduler": {}}})),
    (CONTROLLER_HEAD, cmd(0, "optimizer", {"name": "sgd", "args": {"no_such_arg": 1}})),
    (CONTROLLER_HEAD, cmd(0, "optimizer", {"name": "sgd", "args": [1]})),
    (CONTROLLER_HEAD, cmd(0, "optimizer", {"name": "sgd", "scale": "big"})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"momentum": 0.9})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": 0.0})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": -1.0})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": float("nan")})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": float("inf")})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": 1.0, "momentum": 1.0})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": 1.0, "momentum": -0.1})),
    (CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": "fast"})),
    (CONTROLLER_HEAD, cmd(0, "assign", [1, 2])),
    (1, cmd(0, "assign")),
    (4, cmd(0, "assign")),
]


@pytest.mark.parametrize("head, body", BAD_COMMANDS)
def test_bad_command_rejected_counted_and_harmless(up, head, body):
    up.command(CONTROLLER_HEAD, rec(0, protocol.Add()))
    up.command(head, body)
    assert up.rejected == 1
    w = nd([1.0, 1.0])
    # key 0 still adds: a bad command changes nothing
    np.testing.assert_array_equal(push(up, 0, nd([2.0, 3.0]), w), [3.0, 4.0])


NOT_JSON = 3  # the first BAD_COMMANDS are not JSON: taken as a (refused) kv.set_optimizer


def test_bad_json_commands_alone_install_nothing(up):
    for head, body in BAD_COMMANDS[NOT_JSON:]:
        up.command(head, body)
    assert up.rejected == len(BAD_COMMANDS) - NOT_JSON
    assert up.rules == {} and up.refused is None
    w = nd([5.0])
    up.update(0, nd([2.0]), w)  # no rule for any key: the default, assign
    assert w.asnumpy()[0] == 2.0


def test_bad_pickles_make_pushes_to_stock_keys_fatal(up):
    up.command(CONTROLLER_HEAD, rec(3, protocol.Add()))
    for head, body in BAD_COMMANDS[:NOT_JSON]:
        up.command(head, body)
    assert up.rejected == NOT_JSON and up.refused and up.stock is None
    w = nd([5.0])
    with pytest.raises(Fatal, match="key 0, which needs the optimizer this server refused"):
        up.update(0, nd([2.0]), w)
    assert w.asnumpy()[0] == 5.0  # untouched: the server stops instead
    np.testing.assert_array_equal(push(up, 3, nd([2.0]), w), [7.0])  # hvd_ps keys still work


class _EvalPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import builtins

        return (builtins.eval, (f"open({str(self.path)!r}, 'w').close()",))


class _SubprocessPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import subprocess

        return (subprocess.Popen, (["touch", str(self.path)],))


class EvilSGD(mx.optimizer.SGD):
    """An SGD subclass defined outside MXNet (a stock server would import and run it)."""

    path = "/nonexistent"

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class PlainSubclassSGD(mx.optimizer.SGD):
    """Harmless, but defined outside MXNet: refused all the same (its code is not ours)."""


class _RunsOnCall:
    """An object hidden in an optimizer's attributes."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def payloads(target):
    """Pickles a stock server would execute (or at least import code for)."""
    sgd_with_hidden = mx.optimizer.SGD(learning_rate=0.1)
    sgd_with_hidden.lr_scheduler = _RunsOnCall(target)
    sgd_with_array = mx.optimizer.SGD(learning_rate=0.1)
    sgd_with_array.wd_mult = {0: np.ones(3)}
    sgd_shadowing = mx.optimizer.SGD(learning_rate=0.1)
    sgd_shadowing.update = 1.0  # replaces a method the server would call
    EvilSGD.path = str(target)
    objs = [
        _Evil(target),
        _EvalPayload(target),
        _SubprocessPayload(target),
        EvilSGD(),
        PlainSubclassSGD(),
        sgd_with_hidden,
        sgd_with_array,
        sgd_shadowing,
    ]
    out = []
    for obj in objs:
        out.append(pickle.dumps(obj, 0))  # what MXNet's kv.set_optimizer sends, protocol 0
        out.append(pickle.dumps(obj))  # and a binary protocol
    return out


def test_pickled_payloads_are_refused_and_never_run(up, tmp_path):
    control = tmp_path / "control"
    for cls in (_Evil, _EvalPayload, _SubprocessPayload):
        control.unlink(missing_ok=True)
        obj = pickle.loads(pickle.dumps(cls(control), 0))  # each payload works when unpickled
        if isinstance(obj, __import__("subprocess").Popen):
            obj.wait(timeout=10)
        assert control.exists(), cls
    target = tmp_path / "pwned"
    bodies = payloads(target)
    for body in bodies:
        up.command(CONTROLLER_HEAD, body)
    assert not target.exists()  # ...but the server never runs one
    assert up.rejected == len(bodies)
    assert up.kv.updaters == [] and up.stock is None and up.refused


@pytest.mark.parametrize("index", range(16))
def test_each_payload_refused_by_the_unpickler(tmp_path, index):
    from hvd_ps.ps.stock_optimizer import RefusedOptimizer, load_optimizer

    target = tmp_path / "pwned"
    with pytest.raises(RefusedOptimizer):
        load_optimizer(payloads(target)[index])
    assert not target.exists()


def test_builtin_optimizers_with_schedulers_and_numpy_numbers_unpickle():
    from hvd_ps.ps.stock_optimizer import OPTIMIZER_CLASSES, load_optimizer

    names = list(mx.optimizer.Optimizer.opt_registry)  # every one MXNet registers, "test" too
    assert len(names) == len(OPTIMIZER_CLASSES)
    for name in names:
        opt = load_optimizer(pickle.dumps(mx.optimizer.create(name), 0))
        assert type(opt) is type(mx.optimizer.create(name))
    sched = mx.lr_scheduler.MultiFactorScheduler(step=[5, 9], factor=0.5, base_lr=0.3)
    sent = mx.optimizer.SGD(
        learning_rate=np.float32(0.25),
        momentum=0.9,
        multi_precision=True,
        lr_scheduler=sched,
        param_idx2name={0: "w", 1: "b"},
        rescale_grad=np.float64(0.125),
    )
    sent.set_lr_mult({"w": 2.0})
    got = load_optimizer(pickle.dumps(sent, 0))
    assert isinstance(got.lr_scheduler, mx.lr_scheduler.MultiFactorScheduler)
    assert got.lr_scheduler.step == [5, 9] and got.lr == pytest.approx(0.25)
    assert got.rescale_grad == 0.125 and got.multi_precision and got.idx2name == {0: "w", 1: "b"}
    assert got.lr_mult == {"w": 2.0} and got.param_dict == {}


def test_the_test_optimizer_of_mxnets_nightly_kvstore_test_runs_as_mxnet_runs_it(up):
    """MXNet's ``Test`` optimizer (its nightly dist_sync_kvstore.py --type compressed sends
    it): accepted, and w += rescale_grad * push on keys without a rule."""
    up.command(CONTROLLER_HEAD, pickle.dumps(mx.optimizer.Test(rescale_grad=0.5), 0))
    assert up.rejected == 0 and up.stock is not None
    stored = mx.nd.array([1.0, 2.0, 3.0])
    up.update(9, mx.nd.array([2.0, 4.0, -6.0]), stored)
    up.update(9, mx.nd.array([2.0, 0.0, 0.0]), stored)
    np.testing.assert_array_equal(stored.asnumpy(), [3.0, 4.0, 0.0])


def sgd_body(**kw):
    return pickle.dumps(mx.optimizer.SGD(**kw), 0)


def test_stock_optimizer_runs_on_keys_without_a_rule(up):
    lr, mom, wd, scale = 0.1, 0.9, 0.01, 0.5
    up.command(CONTROLLER_HEAD, rec(1, protocol.Add()))
    up.command(
        CONTROLLER_HEAD,
        sgd_body(learning_rate=lr, momentum=mom, wd=wd, rescale_grad=scale),
    )
    assert up.rejected == 0 and up.stock is not None and len(up.kv.updaters) == 1
    rng = np.random.default_rng(3)
    w_ref = rng.standard_normal(5).astype(np.float32)
    w, w1 = nd(w_ref), nd([1.0])
    mom_ref = np.zeros(5, np.float32)
    for step in range(4):
        g = rng.standard_normal(5).astype(np.float32)
        mom_ref = mom * mom_ref - lr * wd * w_ref - lr * scale * g
        w_ref = w_ref + mom_ref
        np.testing.assert_allclose(push(up, 0, nd(g), w), w_ref, rtol=1e-5, atol=1e-6)
        if step == 1:  # the other workers send the same optimizer: its state is kept
            up.command(
                CONTROLLER_HEAD,
                sgd_body(learning_rate=lr, momentum=mom, wd=wd, rescale_grad=scale),
            )
    np.testing.assert_array_equal(push(up, 1, nd([2.0]), w1), [3.0])  # key 1 keeps its rule


def test_a_refusal_is_sticky_even_if_a_good_optimizer_follows(up, tmp_path):
    up.command(CONTROLLER_HEAD, payloads(tmp_path / "x")[6])  # EvilSGD
    up.command(CONTROLLER_HEAD, sgd_body(learning_rate=0.1))
    with pytest.raises(Fatal, match="refused"):
        up.update(0, nd([1.0]), nd([0.0]))


def test_an_update_that_raises_is_fatal_not_swallowed(up):
    up.command(CONTROLLER_HEAD, sgd_body(learning_rate=0.1))
    with pytest.raises(Fatal, match="could not apply a push to key 0"):
        up.update(0, nd([1.0, 2.0]), nd([0.0]))  # shapes differ: the optimizer raises


def test_default_assign_of_a_row_sparse_push_replaces_its_rows(up):
    full = np.arange(12, dtype=np.float32).reshape(4, 3)
    stored = mx.nd.sparse.row_sparse_array((full, np.arange(4)), shape=(4, 3))
    g = np.full((2, 3), -1.0, np.float32)
    received = mx.nd.sparse.row_sparse_array((g, np.array([0, 2])), shape=(4, 3))
    up.update(5, received, stored)
    expect = full.copy()
    expect[[0, 2]] = -1.0
    np.testing.assert_array_equal(stored.asnumpy(), expect)
    np.testing.assert_array_equal(stored.indices.asnumpy(), np.arange(4))  # every row kept
    empty = mx.nd.sparse.zeros("row_sparse", (4, 3))
    up.update(5, empty, stored)  # a push of no rows changes nothing
    np.testing.assert_array_equal(stored.asnumpy(), expect)


def test_every_whitelisted_optimizer_builds(up):
    for i, name in enumerate(OPTIMIZERS):
        up.command(CONTROLLER_HEAD, rec(i, protocol.Optimizer(name, {"wd": 0.0})))
    assert up.rejected == 0
    assert sorted(up.rules) == list(range(len(OPTIMIZERS)))


def test_updater_installed_once_the_server_port_is_bound(up):
    """The server installs its updater when ps-lite has bound its port (no command needed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        up.install_when_ready(timeout=5.0)
    assert up.installed and up.kv.updaters == [up.update]
    up.command(CONTROLLER_HEAD, rec(0, protocol.Add()))  # a command later does not install it twice
    assert len(up.kv.updaters) == 1


def test_updater_install_gives_up_visibly(up):
    import psutil

    if any(c.status == psutil.CONN_LISTEN for c in psutil.Process().net_connections("tcp")):
        pytest.skip("this test process already listens on a TCP port")
    with pytest.raises(Fatal, match="did not bind this server's port within 0.2 s"):
        up.install_when_ready(timeout=0.2)
    assert not up.installed


# -- checkpoints: a key's server state copied to and from a companion key ----------------------
def test_copy_state_saves_and_restores_the_outer_momentum(up):
    up.command(CONTROLLER_HEAD, rec(0, protocol.Nesterov(lr=1.0, momentum=0.5)))
    w = nd([0.0, 0.0])
    push(up, 0, nd([1.0, 2.0]), w)  # v = g
    push(up, 0, nd([1.0, 0.0]), w)  # v = 0.5 v + g = [1.5, 1.0]
    up.command(CONTROLLER_HEAD, rec(1, protocol.CopyState(source=0, leaf=0)))
    saved = nd([9.0, 9.0])
    np.testing.assert_allclose(push(up, 1, nd([0.0, 0.0]), saved), [1.5, 1.0])
    # a fresh server: the same rule, then the state loaded from the companion key
    fresh = Updaters(DummyKV(), on_fatal=_fatal)
    fresh.command(CONTROLLER_HEAD, rec(0, protocol.Nesterov(lr=1.0, momentum=0.5)))
    fresh.command(CONTROLLER_HEAD, rec(1, protocol.CopyState(source=0, leaf=0, load=True)))
    push(fresh, 1, nd([0.0, 0.0]), nd([1.5, 1.0]))
    w_old, w_new = w.copy(), w.copy()
    a = push(up, 0, nd([2.0, 2.0]), w_old)
    b = push(fresh, 0, nd([2.0, 2.0]), w_new)
    np.testing.assert_allclose(b, a)  # the same next step as the server that never stopped


def test_copy_state_of_adam_carries_both_moments_and_the_update_count(up):
    args = {"learning_rate": 0.1, "wd": 0.0}
    up.command(CONTROLLER_HEAD, rec(0, protocol.Optimizer("adam", args)))
    w = nd([1.0, -1.0, 0.5])
    for g in ([0.1, 0.2, -0.3], [0.4, -0.1, 0.2], [0.0, 0.3, 0.1]):
        push(up, 0, nd(g), w)
    fresh = Updaters(DummyKV(), on_fatal=_fatal)
    fresh.command(CONTROLLER_HEAD, rec(0, protocol.Optimizer("adam", args)))
    for leaf in range(2):  # mean and variance
        up.command(CONTROLLER_HEAD, rec(5, protocol.CopyState(source=0, leaf=leaf)))
        value = push(up, 5, nd([0.0] * 3), nd([0.0] * 3))
        assert np.abs(value).max() > 0
        rule = protocol.CopyState(source=0, leaf=leaf, load=True, count=3)
        fresh.command(CONTROLLER_HEAD, rec(5, rule))
        push(fresh, 5, nd([0.0] * 3), nd(value))
    w_new = w.copy()
    a = push(up, 0, nd([0.2, 0.2, 0.2]), w)
    b = push(fresh, 0, nd([0.2, 0.2, 0.2]), w_new)
    np.testing.assert_allclose(b, a, rtol=1e-6)  # bias correction used update count 4 on both
    with pytest.raises(Fatal, match="2 state arrays, not 3"):
        up.command(CONTROLLER_HEAD, rec(6, protocol.CopyState(source=0, leaf=2)))
        up.update(6, nd([0.0] * 3), nd([0.0] * 3))
    with pytest.raises(Fatal, match="no server state"):
        up.command(CONTROLLER_HEAD, rec(7, protocol.Add()))
        up.command(CONTROLLER_HEAD, rec(8, protocol.CopyState(source=7, leaf=0)))
        up.update(8, nd([0.0]), nd([0.0]))


def test_a_clock_keeps_each_groups_largest_count_its_last_pace_and_refuses_anything_else(up):
    up.command(CONTROLLER_HEAD, rec(5, protocol.Clock(groups=3)))
    w = nd([0, 0, 0, 0, 0, 0])  # counts, then seconds per step
    np.testing.assert_array_equal(
        push(up, 5, nd([-1, 2, -1, -1, 0.5, -1]), w), [0, 2, 0, 0, 0.5, 0]
    )
    np.testing.assert_array_equal(
        push(up, 5, nd([1, -1, -1, 0.25, -1, -1]), w), [1, 2, 0, 0.25, 0.5, 0]
    )
    # a late count is kept at the larger one; a pace is the last one pushed
    np.testing.assert_array_equal(
        push(up, 5, nd([-1, 1, -1, -1, 0.75, -1]), w), [1, 2, 0, 0.25, 0.75, 0]
    )
    done = protocol.CLOCK_DONE
    np.testing.assert_array_equal(
        push(up, 5, nd([-1, -1, done, -1, -1, 2]), w), [1, 2, done, 0.25, 0.75, 2]
    )
    for bad in (
        [1, 2, 3],
        [0.5, -1, -1, -1, -1, -1],
        [-2, -1, -1, -1, -1, -1],
        [np.nan, -1, -1, -1, -1, -1],
        [done * 2, -1, -1, -1, -1, -1],
        [-1, -1, -1, -1, 2e6, -1],
        [-1, -1, -1, np.inf, -1, -1],
    ):
        with pytest.raises(Fatal, match="clock"):
            push(up, 5, nd(bad), w)
    np.testing.assert_array_equal(w.asnumpy(), [1, 2, done, 0.25, 0.75, 2])  # none applied
