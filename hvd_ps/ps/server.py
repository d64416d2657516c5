"""Scheduler and server processes of the PS tier: ``python -m hvd_ps.server``.

Started with MXNet's standard launch environment (``DMLC_ROLE=scheduler|server``,
``DMLC_PS_ROOT_URI``, ``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``,
``DMLC_NODE_HOST``), so MXNet's own launch tools can start it as well as hvd_ps.

Why not MXNet's stock server: ``import mxnet`` with ``DMLC_ROLE=server`` runs a server whose
controller ``pickle.loads`` whatever a client sends, i.e. runs code for anyone who reaches the
port. ``hvd_ps/__init__.py`` defuses that (see :func:`hvd_ps.config.defuse_stock_server`), and
this module runs ps-lite's server loop with its own controller, which accepts two kinds of
command 0 (``kController``); MXNet's other commands (sync mode, multi-precision, gradient
compression, stop) are handled by ps-lite's C++ server itself, as for the stock server:

* hvd_ps's JSON commands (:class:`hvd_ps.ps.protocol.Command`), each setting the rule of one key;
* the pickled optimizer a stock MXNet worker sends with ``kv.set_optimizer`` (Gluon's default
  ``update_on_kvstore`` on a dist KVStore). It is unpickled by
  :func:`hvd_ps.ps.stock_optimizer.load_optimizer`, which resolves only MXNet's built-in
  optimizers and schedulers (never an arbitrary global) and then runs, as MXNet's own server
  would, on every key that has no hvd_ps rule. A refused one is logged, and the first push to
  such a key stops the server with exit code :data:`FATAL_EXIT` and a log line saying why.

Every key has an updater from the start (``assign`` unless a command says otherwise), so an
async server never meets MXNet's abort "Updater needs to be set for async mode"; an update
that raises also stops the server with :data:`FATAL_EXIT` rather than going on with wrong
values. The commands and their update rules are the records of :mod:`hvd_ps.ps.protocol`.
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
from typing import Any, Callable, Dict, Optional

from .. import config, private_api
from . import protocol, stock_optimizer
from .protocol import CONTROLLER_HEAD
from .stock_optimizer import describe as opt_line

log = logging.getLogger("hvd_ps.server")

#: Exit code of a server that stopped because a push could not be applied correctly.
FATAL_EXIT = 4


class _Updaters:
    """Per-key update rules of one server, set by commands from the workers.

    ``on_fatal(message)`` is called (from the server's main thread) when a push cannot be
    applied correctly; the server's default logs the message and exits with
    :data:`FATAL_EXIT`, so a job never goes on with wrong numbers.
    """

    def __init__(self, kv: Any, on_fatal: Optional[Callable[[str], None]] = None) -> None:
        import mxnet as mx

        self.mx = mx
        self.kv = kv
        self.on_fatal = on_fatal or _exit_fatal
        self.installed = False
        self._lock = threading.Lock()
        self.rules: Dict[int, Callable[[Any, Any], None]] = {}
        self.state: Dict[int, Dict[str, Any]] = {}
        self.rejected = 0
        self.seen: set = set()
        #: the MXNet updater of a stock worker's ``kv.set_optimizer`` (keys without a rule)
        self.stock: Optional[Callable[[int, Any, Any], None]] = None
        self.stock_body: Optional[bytes] = None
        #: why a stock optimizer was refused (sticky: pushes to stock keys then stop the job)
        self.refused: Optional[str] = None
        self.audit = _Audit(config.load().audit_dir)

    def install(self) -> None:
        """Install :meth:`update` as the server's updater (once; raises until it exists)."""
        with self._lock:
            if not self.installed:
                private_api.kv_set_updater(self.kv, self.update)
                self.installed = True

    def install_when_ready(self, timeout: float, period: float = 0.002) -> None:
        """Install :meth:`update` as soon as ps-lite has created the server object.

        MXNet creates that object inside ``RunServer`` (which blocks) and installing an
        updater before it exists crashes, so this thread waits for the sign that it does:
        ps-lite binds this node's port right after creating it, before the node even
        registers with the scheduler. Every worker must pass a barrier that needs this
        node's registration, then initialise a key, before it can push to it for real, so
        every key has an updater by then: an async server never meets MXNet's abort
        ("Updater needs to be set for async mode").
        """
        import psutil

        me = psutil.Process()
        end = time.monotonic() + timeout
        while not any(c.status == psutil.CONN_LISTEN for c in me.net_connections(kind="tcp")):
            if time.monotonic() > end:
                self.on_fatal(f"ps-lite did not bind this server's port within {timeout:g} s")
                return
            time.sleep(period)
        self.install()
        log.info("updater installed")

    # -- commands ---------------------------------------------------------------------------
    def command(self, head: int, body: bytes) -> None:
        try:
            if head != CONTROLLER_HEAD:
                raise ValueError(f"unknown command id {head}")
            try:
                cmd = protocol.Command.decode(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._stock_command(body)  # not JSON: what kv.set_optimizer sends (a pickle)
                return
            self.install()
            self.rules[cmd.key] = self._make(cmd.key, cmd.rule)
            log.info("key %d: updater %s %s", cmd.key, *protocol.describe(cmd.rule))
        except Exception as err:  # a bad command must never take the server down
            self.rejected += 1
            log.error("rejected command (%d bytes): %s", len(body), err)

    def _stock_command(self, body: bytes) -> None:
        """``kv.set_optimizer`` from a stock MXNet worker: a built-in optimizer, or refused."""
        if self.stock is not None and body == self.stock_body:
            return  # every worker sends the same optimizer: keep its state
        try:
            opt = stock_optimizer.load_optimizer(body)
        except stock_optimizer.RefusedOptimizer as err:
            self.rejected += 1
            self.refused = str(err)
            log.error(
                "refused the optimizer of a kv.set_optimizer (%d bytes): %s. A push to a key "
                "without an hvd_ps rule will stop this server (exit code %d): use one of "
                "MXNet's built-in optimizers, or update_on_kvstore=False",
                len(body),
                err,
                FATAL_EXIT,
            )
            return
        self.install()
        self.stock = self.mx.optimizer.get_updater(opt)
        self.stock_body = body
        log.info("kv.set_optimizer: %s for every key without an hvd_ps rule", opt_line(opt))

    def _make(self, key: int, rule: protocol.Rule) -> Callable[[Any, Any], None]:
        self.state.pop(key, None)
        if isinstance(rule, protocol.Assign):
            return lambda g, w: w.__setitem__(slice(None), g)
        if isinstance(rule, protocol.Add):
            return lambda g, w: w.__iadd__(g)
        if isinstance(rule, protocol.Optimizer):
            return self._optimizer(key, rule)
        if isinstance(rule, protocol.Nesterov):
            return self._nesterov(key, rule)
        if isinstance(rule, protocol.CopyState):
            return self._copy_state(rule)
        raise ValueError(f"no update rule for {rule!r}")

    def _optimizer(self, key: int, rule: protocol.Optimizer) -> Callable[[Any, Any], None]:
        args = dict(rule.args)
        args["rescale_grad"] = rule.scale * float(args.get("rescale_grad", 1.0))
        opt = self.mx.optimizer.create(rule.name, **args)
        if rule.lr_scale != 1.0:  # async GradientPush: each push is 1/G of a sync round
            opt.set_learning_rate(opt.learning_rate * rule.lr_scale)
        slot: Dict[str, Any] = {"opt": opt}
        self.state[key] = slot

        def update(g: Any, w: Any) -> None:
            if "s" not in slot:
                slot["s"] = opt.create_state(key, w)
            opt.update(key, w, g, slot["s"])

        return update

    def _nesterov(self, key: int, rule: protocol.Nesterov) -> Callable[[Any, Any], None]:
        """Outer SGD with (delayed) momentum, as :class:`hvd_ps.ps.protocol.Nesterov` states it.

        ``slot``: ``v`` the momentum, ``a`` the sum of the scaled pushes since ``v`` was last
        updated (only with a delay), ``k`` how many pushes that sum holds."""
        lr, m, scale, delay = rule.lr, rule.momentum, rule.scale, rule.delay
        slot: Dict[str, Any] = {"k": 0, "delay": delay, "rule": rule}
        self.state[key] = slot

        def update(g: Any, w: Any) -> None:
            d = g * scale
            if rule.clip is not None:
                d = self.mx.nd.clip(d, -rule.clip, rule.clip)
            if rule.wd:
                d = d + rule.wd * w
            if delay > 1:
                a = slot.get("a")
                slot["a"] = a = d.copy() if a is None else a + d
            else:
                a = d
            slot["k"] += 1
            if slot["k"] < delay:
                w -= lr * d  # this push's share of the gradient term; momentum waits
                return
            v_old = slot.get("v")
            v = a.copy() if v_old is None else v_old * m + a
            slot["v"], slot["k"] = v, 0
            if delay > 1:
                slot["a"] = None
            if rule.nesterov:
                w -= lr * (d + m * v)
            elif v_old is None:
                w -= lr * d
            else:
                w -= lr * (d + m * v_old)

        return update

    def leaves(self, key: int, like: Any) -> list:
        """The arrays of key ``key``'s server state, in a fixed order (created, as a first
        update would, if the key has none yet; ``like`` gives their shape and dtype)."""
        slot = self.state.get(key)
        if slot is None:
            raise ValueError(f"key {key} has no server state (its rule keeps none)")
        opt = slot.get("opt")
        if opt is None:  # nesterov: the momentum v and, with a delay, the sum a since it
            names = slot["rule"].state_layout()
            for name in names:  # zeros act as no momentum yet / nothing summed yet
                if slot.get(name) is None:
                    slot[name] = self.mx.nd.zeros(like.shape, dtype=like.dtype)
            return [slot[name] for name in names]
        if "s" not in slot:
            slot["s"] = opt.create_state(key, like)
        return protocol.state_leaves(slot["s"])

    def _copy_state(self, rule: protocol.CopyState) -> Callable[[Any, Any], None]:
        def update(g: Any, w: Any) -> None:
            leaves = self.leaves(rule.source, w)
            if rule.leaf >= len(leaves):
                raise ValueError(
                    f"key {rule.source} has {len(leaves)} state arrays, not {rule.leaf + 1}"
                )
            if rule.load:
                leaves[rule.leaf][:] = w
                slot = self.state[rule.source]
                opt = slot.get("opt")
                if opt is not None:  # MXNet's private count: Adam's bias correction uses it
                    private_api.set_update_count(opt, rule.source, rule.count)
                    opt.num_update = max(opt.num_update, rule.count)
                else:  # a delayed Nesterov: where the key stands in its cycle of pushes
                    slot["k"] = rule.count % slot["delay"]
            else:
                w[:] = leaves[rule.leaf]

        return update

    # -- data -------------------------------------------------------------------------------
    def update(self, key: int, received: Any, stored: Any) -> None:
        """Apply what arrived for ``key`` to its stored slice (called by ps-lite's server)."""
        try:
            if key not in self.seen:
                self.seen.add(key)
                how = (
                    "its rule"
                    if key in self.rules
                    else "the stock optimizer"
                    if self.stock
                    else None
                )
                log.info(
                    "key %d: first update of this server's %d elements (%s, %s) by %s",
                    key,
                    math.prod(stored.shape),
                    stored.dtype.__name__,
                    stored.stype,
                    how or ("nothing: refused" if self.refused else "assign"),
                )
            before = self.audit.before(stored)
            rule = self.rules.get(key)
            if rule is not None:
                rule(received, stored)
            elif self.refused is not None:
                self.on_fatal(
                    f"push to key {key}, which needs the optimizer this server refused "
                    f"({self.refused}); stopping so the job fails instead of training wrong"
                )
            elif self.stock is not None:
                self.stock(key, received, stored)
            else:  # default: assign (sync: the round's sum)
                _assign(received, stored)
            self.audit.record(key, received, before, stored)
        except Exception as err:  # an exception here would be swallowed by ctypes
            self.on_fatal(f"could not apply a push to key {key}: {type(err).__name__}: {err}")


class _Audit:
    """``HVD_PS_AUDIT_DIR``: every applied update as one JSON line (key, its count on this
    server, what arrived, the stored slice before and after), in ``server-<pid>.jsonl``,
    flushed per line, so a test or a soak can replay the servers' arithmetic and count the
    updates (nothing lost, nothing applied twice). Copies every update: small models only."""

    def __init__(self, directory: Optional[str]) -> None:
        self.file = None
        self.counts: Dict[int, int] = {}
        if directory:
            os.makedirs(directory, exist_ok=True)
            self.file = open(os.path.join(directory, f"server-{os.getpid()}.jsonl"), "a")

    def before(self, stored: Any) -> Any:
        return None if self.file is None else stored.asnumpy().ravel().tolist()

    def record(self, key: int, received: Any, before: Any, stored: Any) -> None:
        if self.file is None:
            return
        n = self.counts[key] = self.counts.get(key, 0) + 1
        line = {"key": key, "n": n, "received": received.asnumpy().ravel().tolist()}
        line.update(before=before, after=stored.asnumpy().ravel().tolist())
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()


def _assign(received: Any, stored: Any) -> None:
    """``stored = received``; a row-sparse push replaces only the rows it holds.

    The server keeps a row-sparse key with every row present (its pulls read rows by index),
    so the result is written back with all rows.
    """
    if getattr(received, "stype", "default") != "row_sparse":
        stored[:] = received
        return
    import mxnet as mx

    dense = stored.tostype("default")
    if received.indices.shape[0]:
        dense[received.indices] = received.data
    rows = mx.nd.arange(stored.shape[0], dtype="int64")
    mx.nd.sparse.row_sparse_array((dense, rows), shape=stored.shape).copyto(stored)


def _exit_fatal(message: str) -> None:
    log.error("%s (exit code %d)", message, FATAL_EXIT)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(FATAL_EXIT)


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

    config.restore_role(role)
    kv = mx.kv.create("dist")  # joins ps-lite as this node's role; waits for every node
    if role == "scheduler":
        # the scheduler serves no keys; RunServer only waits for every node to finalize
        private_api.kv_run_server(kv, None)
        return 0
    updaters = _Updaters(kv)
    threading.Thread(
        target=updaters.install_when_ready,
        args=(config.load().timeout,),
        name="hvd_ps-install-updater",
        daemon=True,
    ).start()
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    controller = proto(lambda head, body, _: updaters.command(head, body or b""))
    private_api.kv_run_server(kv, controller)
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
    cfg = config.load()
    if role == "scheduler" and cfg.own_scheduler:  # a tier groups may leave and rejoin
        from . import scheduler

        assert cfg.ps_root_uri is not None and cfg.ps_root_port is not None
        return scheduler.main(
            cfg.ps_root_uri,
            cfg.ps_root_port,
            cfg.ps_num_servers or 1,
            cfg.ps_num_workers or 1,
            cfg.heartbeat,
        )
    return run(role)


if __name__ == "__main__":
    sys.exit(main())
