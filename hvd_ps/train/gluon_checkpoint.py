"""The Gluon trainer's side of checkpoints: its parameters, its local optimizer's state and
counts, its step counter and Horovod's object collectives, for
:mod:`hvd_ps.train.core.resume`."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

from .. import private_api
from ..deadline import deadline
from ..errors import CheckpointError
from ..ps import protocol
from .core import resume
from .core.schedule import Param, Schedule
from .runtime import Runtime


class GluonCheckpoint:
    """A Gluon trainer as checkpoints see it (:class:`hvd_ps.train.core.resume.FrontEnd`).

    The trainer hands over what it keeps to itself as values and functions (its job, its
    schedule, its step counter, its set-up, its trained parameters), so nothing here reads its
    private members."""

    def __init__(
        self,
        trainer: Any,
        job: Runtime,
        schedule: Schedule,
        counter: Callable[[], int],
        set_counter: Callable[[int], None],
        setup: Callable[[Optional[List[Any]]], None],
        trained: Callable[[], List[Any]],
    ) -> None:
        self.trainer = trainer
        self._job, self._schedule = job, schedule
        self.counter, self.set_counter = counter, set_counter
        self.setup_trainer, self.trained = setup, trained

    @property
    def job(self) -> Runtime:
        return self._job

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @property
    def step(self) -> int:
        return self.counter()

    def set_step(self, step: int) -> None:
        self.set_counter(step)

    def setup(self, ps_initial: Optional[List[Any]] = None) -> None:
        self.setup_trainer(ps_initial)

    def parameters(self) -> List[Param]:
        return [Param(p.name, p.data(), p.grad()) for p in self.trained()]

    def set_parameters(self, values: Dict[str, np.ndarray[Any, Any]]) -> None:
        for p in self.trained():
            p.set_data(mx.nd.array(values[p.name], dtype=p.dtype))

    def optimizer_arrays(self) -> Iterator[Tuple[str, np.ndarray[Any, Any]]]:
        for index, state in private_api.local_updater(self.trainer).states.items():
            for leaf, a in enumerate(protocol.state_leaves(state)):
                yield f"{index}/{leaf}", resume.view(a)

    def optimizer_counts(self) -> Dict[str, Any]:
        counts = private_api.update_counts(self.trainer.optimizer)
        return {
            "opt_counts": {str(k): int(v) for k, v in counts.items()},
            "num_update": int(self.trainer.optimizer.num_update),
        }

    def load_optimizer(
        self, saved: Dict[int, Dict[int, np.ndarray[Any, Any]]], counts: Dict[str, Any]
    ) -> None:
        opt, updater = self.trainer.optimizer, private_api.local_updater(self.trainer)
        trained = private_api.trained_params(self.trainer)
        for i, leaves in saved.items():
            state = opt.create_state_multi_precision(i, trained[i].data())
            have = protocol.state_leaves(state)
            if len(have) != len(leaves):
                raise CheckpointError(
                    f"the local optimizer keeps {len(have)} state arrays for parameter {i}, "
                    f"the checkpoint {len(leaves)}: resume with the optimizer it was saved with"
                )
            for n, a in enumerate(have):
                a[:] = mx.nd.array(leaves[n], dtype=a.dtype)
            updater.states[i] = state
            updater.states_synced[i] = True
        opt_counts = {int(k): v for k, v in counts["opt_counts"].items()}
        private_api.set_update_counts(opt, opt_counts)
        opt.num_update = int(counts["num_update"])

    def rank(self) -> int:
        return int(hvd.rank())

    def allgather_object(self, obj: Any, name: str) -> List[Any]:
        with deadline(f"checkpoint: {name} on every rank", self.job.cfg.settings.timeout):
            return list(hvd.allgather_object(obj, name=name))

    def broadcast_object(self, obj: Any, name: str) -> Any:
        with deadline(f"checkpoint: {name} from rank 0", self.job.cfg.settings.timeout):
            return hvd.broadcast_object(obj, root_rank=0, name=name)
