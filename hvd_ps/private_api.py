"""The private names of MXNet, Gluon, Horovod and argparse that hvd_ps uses, in one place, each
with its reason: the checklist for an upgrade of the pinned MXNet (1.9.1) or Horovod (0.28.1).

No other module of hvd_ps touches a private name of another project; each goes through a function
here. Everything else keeps to public methods (``allreduce_grads()``, ``update()``, ``kv.push``).

=================================  ======================  =========================================
private name                       of                      why hvd_ps needs it
=================================  ======================  =========================================
``Trainer._params``                ``gluon.Trainer``       the Parameters the trainer updates, in
                                                           its order (no public accessor): the
                                                           fused buffers, the cross-group check
``Trainer._scale``                 ``gluon.Trainer``       the gradient scale Horovod folds its
                                                           group average into; GradientPush pushes
                                                           gradients with it, and a group of one
                                                           rank undoes Horovod's
                                                           ``gradient_predivide_factor`` there
``_average_in_framework``          Horovod's trainer       whether that average sits in ``_scale``
``Trainer._updaters``              ``gluon.Trainer``       the local optimizer's state per parameter
                                                           (``.states``), saved in checkpoints
``Optimizer._index_update_count``  ``mx.optimizer``        per-parameter update counts (Adam's bias
                                                           correction, schedules): saved with the
                                                           local state; the servers set it when a
                                                           checkpoint's optimizer state is loaded
``KVStore._barrier``               ``mx.kv``               a barrier of the leaders (the PS client,
                                                           a shared tier's placement)
``KVStore._send_command_to_``      ``mx.kv``               hvd_ps's commands to the servers (their
``servers``                                                update rules, sync mode)
``KVStore._set_updater``           ``mx.kv``               the server's own update rules
``MXKVStoreSetBarrierBefore``      MXNet's C API           an async leader of a shared tier leaves
``Exit`` (``mxnet.base._LIB``)                             without ps-lite's exit barrier
``MXKVStoreRunServer``             MXNet's C API           a server with hvd_ps's command handler
(``mxnet.base._LIB``)                                      (Python's ``KVStore`` wraps no handler)
``MXNDArrayGetData``               MXNet's C API           a checkpoint writes arrays straight from
(``mxnet.base._LIB``)                                      their memory, without a copy; the
                                                           servers' compressed shards work on
                                                           their keys' memory in place
``MXNDArrayWaitToWrite``           MXNet's C API           wait until every queued read of an array
(``mxnet.base._LIB``)                                      (a PS push) is done: the compressed
                                                           wire's sync rounds, and the servers
                                                           before they write a key's memory
                                                           (Python's NDArray wraps only
                                                           ``wait_to_read``)
``ArgumentParser._actions``        argparse                ``hvdps-run``'s flags, to tell its own
                                                           from ``horovodrun``'s
=================================  ======================  =========================================
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable, Dict, List


def trained_params(trainer: Any) -> List[Any]:
    """The trainer's Parameters, in the order Gluon (and Horovod's tensor names) use."""
    return list(trainer._params)


def grad_scale(trainer: Any) -> float:
    """The factor ``update()`` multiplies the gradients by, before dividing by the batch."""
    return float(trainer._scale)


def set_grad_scale(trainer: Any, scale: float) -> None:
    trainer._scale = scale


def averages_in_framework(trainer: Any) -> bool:
    """True when Horovod left the group average to ``_scale`` instead of its allreduce."""
    return bool(trainer._average_in_framework)


def local_updater(trainer: Any) -> Any:
    """The Updater of the trainer's (one, CPU) context: ``.states`` by parameter index."""
    updaters = trainer._updaters
    if len(updaters) != 1:
        raise ValueError(f"hvd_ps trains on one context per rank, this trainer has {len(updaters)}")
    return updaters[0]


def update_counts(optimizer: Any) -> Dict[int, int]:
    """How often the optimizer has updated each parameter index."""
    return dict(optimizer._index_update_count)


def set_update_counts(optimizer: Any, counts: Dict[int, int]) -> None:
    optimizer._index_update_count = dict(counts)


def set_update_count(optimizer: Any, index: int, count: int) -> None:
    """Set one index's update count (a server loading a checkpoint's optimizer state)."""
    optimizer._index_update_count[index] = count


def kv_barrier(kv: Any) -> None:
    """A barrier of every worker of the dist KVStore (the leaders)."""
    kv._barrier()


def kv_command(kv: Any, head: int, body: str) -> None:
    """Send a command (``head``, ``body``) to every server of the dist KVStore."""
    kv._send_command_to_servers(head, body)


def kv_set_updater(kv: Any, updater: Callable[[int, Any, Any], None]) -> None:
    """The server's update function for every push."""
    kv._set_updater(updater)


def kv_leave_without_barrier(kv: Any) -> None:
    """Let this worker leave the tier without ps-lite's exit barrier over all workers."""
    from mxnet.base import _LIB, check_call

    check_call(_LIB.MXKVStoreSetBarrierBeforeExit(kv.handle, ctypes.c_int(0)))


def kv_run_server(kv: Any, controller: Any) -> None:
    """Serve (a server) or wait for every node to finish (the scheduler): MXNet's ``RunServer``
    with hvd_ps's command handler (a ctypes callback, or None)."""
    from mxnet.base import _LIB, check_call

    check_call(_LIB.MXKVStoreRunServer(kv.handle, controller, None))


def ndarray_address(a: Any) -> int:
    """The address of a CPU NDArray's memory (the caller has waited for it to be written)."""
    from mxnet.base import _LIB, check_call

    ptr = ctypes.c_void_p()
    check_call(_LIB.MXNDArrayGetData(a.handle, ctypes.byref(ptr)))
    return int(ptr.value or 0)


def ndarray_view(a: Any) -> Any:
    """A numpy array on a CPU NDArray's memory (no copy), after waiting until nothing queued on
    MXNet's engine reads or writes it. The caller keeps ``a`` alive while it uses the view and
    queues nothing on ``a`` meanwhile."""
    import numpy as np

    wait_to_write(a)
    dtype = np.dtype(a.dtype)
    buf = (ctypes.c_char * (int(a.size) * dtype.itemsize)).from_address(ndarray_address(a))
    return np.frombuffer(memoryview(buf), dtype=dtype)


def wait_to_write(a: Any) -> None:
    """Block until every operation queued on ``a`` is done, its reads too (a push of it)."""
    from mxnet.base import _LIB, check_call

    check_call(_LIB.MXNDArrayWaitToWrite(a.handle))


def parser_actions(parser: Any) -> List[Any]:
    """The actions (flags) an ``argparse.ArgumentParser`` was given."""
    return list(parser._actions)
