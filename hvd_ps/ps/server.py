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
from typing import Any, Callable, Dict, Optional, Set

from .. import config, private_api
from . import protocol, rules, stock_optimizer
from .protocol import CONTROLLER_HEAD
from .stock_optimizer import describe as opt_line

log = logging.getLogger("hvd_ps.server")

#: Exit code of a server that stopped because a push could not be applied correctly.
FATAL_EXIT = 4


class Updaters:
    """Per-key update rules of one server, set by commands from the workers.

    ``on_fatal(message)`` is called (from the server's main thread) when a push cannot be
    applied correctly; the server's default logs the message and exits with
    :data:`FATAL_EXIT`, so a job never goes on with wrong numbers.
    """

    def __init__(
        self,
        kv: Any,
        on_fatal: Optional[Callable[[str], None]] = None,
        audit_dir: Optional[str] = None,
    ) -> None:
        import mxnet as mx

        self.mx = mx
        self.kv = kv
        self.on_fatal = on_fatal or _exit_fatal
        self.installed = False
        self._lock = threading.Lock()
        #: each key's rule (:mod:`hvd_ps.ps.rules`), set by a leader's command
        self.rules: Dict[int, rules.Rule] = {}
        self.rejected = 0
        self.seen: Set[Any] = set()
        #: the MXNet updater of a stock worker's ``kv.set_optimizer`` (keys without a rule)
        self.stock: Optional[Callable[[int, Any, Any], None]] = None
        self.stock_body: Optional[bytes] = None
        #: why a stock optimizer was refused (sticky: pushes to stock keys then stop the job)
        self.refused: Optional[str] = None
        self.audit = _Audit(audit_dir)

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
            known = self.rules.get(cmd.key)
            if known is not None and known.record == cmd.rule:
                # every leader sends each key's rule (and a rejoining one sends it again): the
                # same rule keeps the key's state (momentum, optimizer state, a loaded
                # checkpoint's); only another rule starts afresh
                return
            self.rules[cmd.key] = rules.make(cmd.rule, cmd.key, self.rules.get)
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
                rule.update(received, stored)
            elif self.refused is not None:
                self.on_fatal(
                    f"push to key {key}, which needs the optimizer this server refused "
                    f"({self.refused}); stopping so the job fails instead of training wrong"
                )
            elif self.stock is not None:
                self.stock(key, received, stored)
            else:  # default: assign (sync: the round's sum)
                rules.assign(received, stored)
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


def run(role: str, cfg: config.Config) -> int:
    """Run a scheduler or a server until the job's workers finish. Returns an exit code."""
    import mxnet as mx

    config.restore_role(role)
    kv = mx.kv.create("dist")  # joins ps-lite as this node's role; waits for every node
    if role == "scheduler":
        # the scheduler serves no keys; RunServer only waits for every node to finalize
        private_api.kv_run_server(kv, None)
        return 0
    updaters = Updaters(kv, audit_dir=cfg.settings.audit_dir)
    threading.Thread(
        target=updaters.install_when_ready,
        args=(cfg.settings.timeout,),
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
    cfg = config.load()
    logging.basicConfig(
        level=cfg.settings.log_level,
        format=f"%(asctime)s [hvd_ps {role} pid {os.getpid()}] %(levelname)s %(message)s",
    )
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    if role == "scheduler" and cfg.wiring.own_scheduler:  # a tier groups may leave and rejoin
        from . import scheduler

        assert cfg.wiring.ps_root_uri is not None and cfg.wiring.ps_root_port is not None
        return scheduler.main(
            cfg.wiring.ps_root_uri,
            cfg.wiring.ps_root_port,
            cfg.wiring.ps_num_servers or 1,
            cfg.wiring.ps_num_workers or 1,
            cfg.settings.heartbeat,
            cfg.wiring.announced_roles,
        )
    return run(role, cfg)


if __name__ == "__main__":
    sys.exit(main())
