"""Scheduler and server processes of the PS tier: ``python -m hvd_ps.server``.

Started with MXNet's standard launch environment (``DMLC_ROLE=scheduler|server``,
``DMLC_PS_ROOT_URI``, ``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``,
``DMLC_NODE_HOST``), so MXNet's own launch tools can start it as well as hvd_ps.

Why not MXNet's stock server: ``import mxnet`` with ``DMLC_ROLE=server`` runs a server whose
controller ``pickle.loads`` whatever a client sends, i.e. runs code for anyone who reaches the
port. ``hvd_ps/__init__.py`` defuses that (see :func:`hvd_ps.config.defuse_stock_server`), and
this module runs ps-lite's server loop with a controller that accepts only JSON commands naming
one of the built-in updaters in :data:`UPDATERS`. Anything else is logged and ignored.

A command is ``{"hvd_ps": 1, "key": <int>, "updater": <name>, "params": {...}}``: it sets how
pushes to ``key`` are applied. Each updater gets the server's stored slice of the key ``w`` and
what arrived ``g``: in sync mode ``g`` is the sum of one round of pushes (one per worker), in
async mode a single push.

=================  ============================================================================
updater            what a push does to the stored value ``w``
=================  ============================================================================
``assign``         ``w = g`` (sync: the sum of the round; the default for every key)
``add``            ``w += g``
``optimizer``      ``w = opt(w, scale * g)`` with a whitelisted MXNet optimizer
                   (``params: {"name": "sgd", "scale": 0.5, "args": {"learning_rate": 0.1}}``)
``nesterov``       outer Nesterov/heavy-ball SGD, ``D = scale*g; v = m*v + D;
                   w -= lr*(D + m*v)`` (``nesterov: true``) or ``w -= lr*v``
=================  ============================================================================
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Dict

from . import config

log = logging.getLogger("hvd_ps.server")

#: MXNet optimizers a client may ask a server to run, by name. Their arguments are plain JSON.
OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "signum", "ftrl")
#: ``kController``: the command id MXNet uses for controller messages (our JSON rides on it).
CONTROLLER_HEAD = 0


class _Updaters:
    """Per-key update rules of one server, set by JSON commands from the workers."""

    def __init__(self, kv: Any) -> None:
        import mxnet as mx

        self.mx = mx
        self.kv = kv
        self.installed = False
        self.rules: Dict[int, Callable[[Any, Any], None]] = {}
        self.state: Dict[int, Dict[str, Any]] = {}
        self.rejected = 0

    # -- commands ---------------------------------------------------------------------------
    def command(self, head: int, body: bytes) -> None:
        try:
            if head != CONTROLLER_HEAD:
                raise ValueError(f"unknown command id {head}")
            try:
                msg = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ValueError("not an hvd_ps JSON command (a pickled object?)") from None
            if not isinstance(msg, dict) or msg.get("hvd_ps") != 1:
                raise ValueError("not an hvd_ps command")
            key = int(msg["key"])
            if not self.installed:
                # MXNet creates the server object inside RunServer, so the updater can only
                # be installed from here (as MXNet's own server does); clients send a command
                # for every key before they push to it.
                self.kv._set_updater(self.update)
                self.installed = True
            self.rules[key] = self._make(key, str(msg["updater"]), dict(msg.get("params") or {}))
            log.info("key %d: updater %s %s", key, msg["updater"], msg.get("params") or {})
        except Exception as err:  # a bad command must never take the server down
            self.rejected += 1
            log.error("rejected command (%d bytes): %s", len(body), err)

    def _make(self, key: int, name: str, params: Dict[str, Any]) -> Callable[[Any, Any], None]:
        self.state.pop(key, None)
        if name == "assign":
            return lambda g, w: w.__setitem__(slice(None), g)
        if name == "add":
            return lambda g, w: w.__iadd__(g)
        if name == "optimizer":
            return self._optimizer(key, params)
        if name == "nesterov":
            return self._nesterov(key, params)
        raise ValueError(f"unknown updater {name!r} (known: assign, add, optimizer, nesterov)")

    def _optimizer(self, key: int, params: Dict[str, Any]) -> Callable[[Any, Any], None]:
        opt_name = str(params.get("name", ""))
        if opt_name not in OPTIMIZERS:
            raise ValueError(f"optimizer {opt_name!r} is not one of {', '.join(OPTIMIZERS)}")
        args = params.get("args") or {}
        if not isinstance(args, dict) or not all(
            isinstance(v, (int, float, bool, type(None))) for v in args.values()
        ):
            raise ValueError("optimizer args must be a JSON object of numbers")
        args = dict(args)
        args["rescale_grad"] = float(params.get("scale", 1.0)) * float(
            args.get("rescale_grad", 1.0)
        )
        opt = self.mx.optimizer.create(opt_name, **args)
        slot: Dict[str, Any] = {}
        self.state[key] = slot

        def update(g: Any, w: Any) -> None:
            if "s" not in slot:
                slot["s"] = opt.create_state(key, w)
            opt.update(key, w, g, slot["s"])

        return update

    def _nesterov(self, key: int, params: Dict[str, Any]) -> Callable[[Any, Any], None]:
        lr = float(params["lr"])
        m = float(params.get("momentum", 0.0))
        nesterov = bool(params.get("nesterov", True))
        scale = float(params.get("scale", 1.0))
        if not (0 < lr < math.inf) or not 0 <= m < 1:  # also rejects nan (JSON's NaN)
            raise ValueError(f"nesterov needs lr > 0 and 0 <= momentum < 1, got {lr}, {m}")
        slot: Dict[str, Any] = {}
        self.state[key] = slot

        def update(g: Any, w: Any) -> None:
            d = g * scale
            v = slot.get("v")
            v = d.copy() if v is None else v * m + d
            slot["v"] = v
            w -= lr * (d + m * v) if nesterov else lr * v

        return update

    # -- data -------------------------------------------------------------------------------
    def update(self, key: int, received: Any, stored: Any) -> None:
        rule = self.rules.get(key)
        if rule is None:  # default: assign (sync: the round's sum)
            stored[:] = received
        else:
            rule(received, stored)


def _watch_parent(parent: int, period: float = 0.5) -> None:
    """Exit when the process that started us is gone (no orphaned servers, ever)."""
    while True:
        time.sleep(period)
        if os.getppid() != parent:
            log.error("parent process %d is gone; stopping", parent)
            os._exit(3)


def run(role: str) -> int:
    """Run a scheduler or a server until the job's workers finish. Returns an exit code."""
    import mxnet as mx
    from mxnet.base import _LIB, check_call

    config.restore_role(role)
    kv = mx.kv.create("dist")  # joins ps-lite as this node's role; waits for every node
    if role == "scheduler":
        # the scheduler serves no keys; RunServer only waits for every node to finalize
        check_call(_LIB.MXKVStoreRunServer(kv.handle, None, None))
        return 0
    updaters = _Updaters(kv)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    controller = proto(lambda head, body, _: updaters.command(head, body or b""))
    check_call(_LIB.MXKVStoreRunServer(kv.handle, controller, None))
    if updaters.rejected:
        log.warning("rejected %d command(s) during the job", updaters.rejected)
    return 0


def main() -> int:
    role = config.server_role()
    if role is None:
        print(
            "hvd_ps.server: DMLC_ROLE must be 'scheduler' or 'server' (MXNet's launch "
            "environment: DMLC_ROLE, DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER, "
            "DMLC_NUM_WORKER, DMLC_NODE_HOST)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=config.load().log_level,
        format=f"%(asctime)s [hvd_ps {role} pid {os.getpid()}] %(levelname)s %(message)s",
    )
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    return run(role)


if __name__ == "__main__":
    sys.exit(main())
