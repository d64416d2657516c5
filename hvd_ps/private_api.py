"""The private members of Gluon's ``Trainer`` and Horovod's ``DistributedTrainer`` that
:class:`hvd_ps.DistributedTrainer` still reads or writes, in one place, each with its reason.

The trainer otherwise keeps to their public methods (``allreduce_grads()``, ``update()``).
When MXNet (pinned: 1.9.1) or Horovod (0.28.1) changes, these are what to check:

==========================  ==================  ===============================================
member                      of                  why hvd_ps needs it
==========================  ==================  ===============================================
``_params``                 ``gluon.Trainer``   the Parameters the trainer updates, in its
                                                order (no public accessor): the fused buffers
                                                and the cross-group check are built from them
``_scale``                  ``gluon.Trainer``   the gradient scale Horovod folds its group
                                                average into; GradientPush pushes gradients
                                                with it (the servers, not ``update()``, apply
                                                them), and a group of one rank undoes
                                                Horovod's ``gradient_predivide_factor`` there
``_average_in_framework``   Horovod             whether that average sits in ``_scale``
                                                (Horovod's choice, made in its constructor)
``_updaters``               ``gluon.Trainer``   the Updater holding the local optimizer's
                                                state per parameter (``.states``), which a
                                                checkpoint saves and restores
``_index_update_count``     ``mx.optimizer``    the per-parameter update counts (Adam's bias
                                                correction, learning-rate schedules), saved
                                                with that state
==========================  ==================  ===============================================

Outside the trainer, three private methods of MXNet's ``KVStore`` are used where they are
needed, with the same caveat: ``_barrier`` and ``_send_command_to_servers`` by the leaders'
client (:mod:`hvd_ps.ps.client`: a barrier of the leaders, the servers' commands) and
``_set_updater`` by the server (:mod:`hvd_ps.server`: its update rules). Two entry points of
MXNet's C API that its Python ``KVStore`` does not wrap are called through ``mxnet.base._LIB``:
``MXKVStoreSetBarrierBeforeExit`` (:mod:`hvd_ps.ps.client`: an async leader of a shared tier leaves
without ps-lite's exit barrier) and ``MXNDArrayGetData`` (:mod:`hvd_ps.train.core.resume`: arrays
written to a shard straight from their memory).
"""

from __future__ import annotations

from typing import Any, List


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


def update_counts(optimizer: Any) -> dict:
    """How often the optimizer has updated each parameter index."""
    return dict(optimizer._index_update_count)


def set_update_counts(optimizer: Any, counts: dict) -> None:
    optimizer._index_update_count = dict(counts)
