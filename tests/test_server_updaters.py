"""hvd_ps.server._Updaters: the server-side update rules and the command filter (no ps-lite).

A dummy KVStore records the updater the server would install; pushes are simulated by calling
``update(key, received, stored)`` exactly as ps-lite's server does.
"""

from __future__ import annotations

import json
import os
import pickle

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.server import CONTROLLER_HEAD, OPTIMIZERS, _Updaters


class DummyKV:
    def __init__(self):
        self.updaters = []

    def _set_updater(self, fn):
        self.updaters.append(fn)


def cmd(key, updater, params=None, **extra):
    msg = {"hvd_ps": 1, "key": key, "updater": updater, "params": params or {}}
    msg.update(extra)
    return json.dumps(msg).encode()


@pytest.fixture
def up():
    return _Updaters(DummyKV())


def nd(a):
    return mx.nd.array(np.asarray(a, dtype=np.float32))


def push(up, key, g, w):
    """Apply ``g`` to the stored array ``w`` through the installed updater, as ps-lite does."""
    up.kv.updaters[-1](key, g, w)
    return w.asnumpy()


def test_installs_once_on_first_valid_command(up):
    assert up.kv.updaters == [] and not up.installed
    up.command(CONTROLLER_HEAD, cmd(0, "assign"))
    up.command(CONTROLLER_HEAD, cmd(1, "add"))
    assert len(up.kv.updaters) == 1 and up.installed
    assert up.kv.updaters[0] == up.update
    assert up.rejected == 0


def test_default_and_assign(up):
    up.command(CONTROLLER_HEAD, cmd(0, "add"))
    w = nd([1, 2, 3])
    # key 7 never got a command: assign (sync: the round's sum)
    np.testing.assert_array_equal(push(up, 7, nd([4, 5, 6]), w), [4, 5, 6])
    up.command(CONTROLLER_HEAD, cmd(3, "assign"))
    np.testing.assert_array_equal(push(up, 3, nd([-1, 0, 9]), w), [-1, 0, 9])


def test_add_accumulates(up):
    up.command(CONTROLLER_HEAD, cmd(2, "add"))
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
    up.command(CONTROLLER_HEAD, cmd(5, "nesterov", params))
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


def test_nesterov_state_is_per_key_and_reset_by_a_new_command(up):
    up.command(CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": 1.0, "momentum": 0.5}))
    up.command(CONTROLLER_HEAD, cmd(1, "nesterov", {"lr": 1.0, "momentum": 0.5}))
    w0, w1 = nd([0.0]), nd([0.0])
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-1.5)  # v=1; w -= 1+0.5
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-1.5 - 1.75)  # v=1.5; 1+0.75
    assert push(up, 1, nd([1.0]), w1)[0] == pytest.approx(-1.5)  # key 1 has its own v
    up.command(CONTROLLER_HEAD, cmd(0, "nesterov", {"lr": 1.0, "momentum": 0.5}))
    assert push(up, 0, nd([1.0]), w0)[0] == pytest.approx(-3.25 - 1.5)  # v restarted at 0


def test_optimizer_sgd_momentum_matches_numpy(up):
    lr, mom, wd, scale = 0.1, 0.9, 0.01, 0.5
    args = {"learning_rate": lr, "momentum": mom, "wd": wd}
    up.command(CONTROLLER_HEAD, cmd(4, "optimizer", {"name": "sgd", "scale": scale, "args": args}))
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
    up.command(CONTROLLER_HEAD, cmd(9, "optimizer", params))
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
    up.command(CONTROLLER_HEAD, cmd(0, "add"))
    up.command(head, body)
    assert up.rejected == 1
    w = nd([1.0, 1.0])
    # key 0 still adds: a bad command changes nothing
    np.testing.assert_array_equal(push(up, 0, nd([2.0, 3.0]), w), [3.0, 4.0])


def test_bad_commands_alone_install_nothing(up):
    for head, body in BAD_COMMANDS:
        up.command(head, body)
    assert up.rejected == len(BAD_COMMANDS)
    assert up.rules == {} and up.state == {}
    w = nd([5.0])
    up.update(0, nd([2.0]), w)  # no rule for any key: the default, assign
    assert w.asnumpy()[0] == 2.0


def test_pickled_optimizer_is_not_unpickled(up, tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control), 0))  # the payload works when unpickled...
    assert control.exists()
    target = tmp_path / "pwned"
    evil_opt = type("EvilSGD", (mx.optimizer.SGD,), {"__reduce__": _Evil(target).__reduce__})
    for obj in (_Evil(target), evil_opt()):
        body = pickle.dumps(obj, 0)  # what MXNet's kv.set_optimizer sends, protocol 0
        up.command(CONTROLLER_HEAD, body)
        up.command(CONTROLLER_HEAD, pickle.dumps(obj))  # and a binary protocol
    assert not target.exists()  # ...but the server never unpickles it
    assert up.rejected == 4
    assert up.kv.updaters == []


def test_every_whitelisted_optimizer_builds(up):
    for i, name in enumerate(OPTIMIZERS):
        up.command(CONTROLLER_HEAD, cmd(i, "optimizer", {"name": name, "args": {"wd": 0.0}}))
    assert up.rejected == 0
    assert sorted(up.rules) == list(range(len(OPTIMIZERS)))
