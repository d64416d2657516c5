"""hvd_ps.ps.protocol: the leader-to-server commands, their encoding and their checks (no MXNet)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from hvd_ps.errors import ConfigError
from hvd_ps.ps import protocol

RULES = [
    protocol.Assign(),
    protocol.Add(),
    protocol.Optimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9}, scale=0.25),
    protocol.Optimizer("adam", {}),
    protocol.Nesterov(lr=0.7, momentum=0.9, nesterov=False, scale=0.5),
    protocol.Nesterov(lr=1),
    protocol.CopyState(source=3, leaf=1, load=True, count=12),
    protocol.Clock(groups=4),
]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_a_command_survives_its_encoding(rule):
    body = protocol.Command(7, rule).encode()
    msg = json.loads(body)
    assert msg["hvd_ps"] == protocol.VERSION and msg["key"] == 7
    assert msg["updater"] == rule.updater
    back = protocol.Command.decode(body.encode())
    assert back == protocol.Command(7, rule) and type(back.rule) is type(rule)


def test_the_wire_format_is_the_documented_one():
    body = protocol.Command(3, protocol.Nesterov(lr=0.5, momentum=0.8, scale=0.25)).encode()
    assert json.loads(body) == {
        "hvd_ps": 1,
        "key": 3,
        "updater": "nesterov",
        "params": {
            "lr": 0.5,
            "momentum": 0.8,
            "nesterov": True,
            "scale": 0.25,
            "delay": 1,
            "wd": 0.0,
            "clip": None,
        },
    }
    body = protocol.Command(0, protocol.Optimizer("sgd", {"wd": 0.1}, 0.5)).encode()
    assert json.loads(body)["params"] == {
        "name": "sgd",
        "args": {"wd": 0.1},
        "scale": 0.5,
        "lr_scale": 1.0,
    }
    assert json.loads(protocol.Command(1, protocol.Add()).encode())["params"] == {"scale": 1.0}


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: protocol.Nesterov(lr=0.0), "lr"),
        (lambda: protocol.Nesterov(lr=math.nan), "lr"),
        (lambda: protocol.Nesterov(lr=math.inf), "lr"),
        (lambda: protocol.Nesterov(lr="fast"), "lr"),
        (lambda: protocol.Nesterov(lr=1.0, momentum=1.0), "momentum"),
        (lambda: protocol.Nesterov(lr=1.0, momentum=-0.1), "momentum"),
        (lambda: protocol.Nesterov(lr=1.0, nesterov="yes"), "nesterov"),
        (lambda: protocol.Nesterov(lr=1.0, scale=0.0), "scale"),
        (lambda: protocol.Optimizer("SGD"), "optimizer 'SGD' is not one of"),
        (lambda: protocol.Optimizer("sgd", {"lr_scheduler": {}}), "optimizer_params"),
        (lambda: protocol.Optimizer("sgd", [1]), "optimizer_params"),
        (lambda: protocol.Optimizer("sgd", scale=True), "scale"),
        (lambda: protocol.CopyState(source=-1, leaf=0), "source"),
        (lambda: protocol.CopyState(source=0, leaf=0, load=1), "load"),
        (lambda: protocol.Command(-1, protocol.Add()), "key"),
        (lambda: protocol.Clock(groups=0), "groups"),
        (lambda: protocol.Clock(groups=2.0), "groups"),
        (lambda: protocol.Command(True, protocol.Add()), "key"),
    ],
)
def test_a_record_refuses_what_a_server_would(make, names):
    with pytest.raises(ConfigError, match=names):
        make()


@pytest.mark.parametrize(
    "body, why",
    [
        ('{"hvd_ps": 2, "key": 0, "updater": "add", "params": {}}', "version 1"),
        ('{"hvd_ps": 1, "key": 0, "updater": "eval", "params": {}}', "unknown updater 'eval'"),
        ('{"hvd_ps": 1, "key": 0, "updater": "add", "params": {"x": 1}}', "no parameter x"),
        ('{"hvd_ps": 1, "key": 0, "updater": "nesterov", "params": {}}', "lr"),
        ('{"hvd_ps": 1, "key": 0, "updater": "add", "params": [1]}', "JSON object"),
        ('{"hvd_ps": 1, "key": "0", "updater": "add", "params": {}}', "key"),
        ('{"hvd_ps": 1, "key": 0, "updater": "nesterov", "params": {"lr": NaN}}', "lr"),
        ("[1, 2]", "version 1"),
    ],
)
def test_decode_refuses_anything_else_with_the_reason(body, why):
    with pytest.raises(ValueError, match=why):
        protocol.Command.decode(body)


def test_round_scale_is_the_mean_of_a_sync_round():
    assert protocol.round_scale("sync", 4) == 0.25
    assert protocol.round_scale("async", 4) == 1.0


def test_the_protocol_needs_neither_mxnet_nor_horovod():
    assert "hvd_ps.ps.protocol" in sys.modules
    import subprocess

    code = (
        "import sys, hvd_ps.ps.protocol; "
        "print(sorted(m for m in ('mxnet', 'horovod', 'hvd_ps.train.core.fusion')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
