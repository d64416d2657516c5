"""What both front ends hand checkpoints alike (:class:`hvd_ps.train.core.resume.FrontEnd`):
the job, the schedule, the step counter, the set-up and the trained parameters, as values and
functions, and the object collectives of the process's Horovod (:mod:`hvd_ps.frameworks`).
Each front end adds its parameters' and local optimizer's side
(:mod:`~hvd_ps.train.gluon_checkpoint`, :mod:`~hvd_ps.train.torch_checkpoint`)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from .. import frameworks
from ..deadline import deadline
from .core.schedule import Schedule
from .runtime import Runtime


class Checkpointed:
    """A front end's trainer as checkpoints see it, but for its parameters and optimizer.

    The trainer hands over what it keeps to itself (its job, its schedule, its step counter,
    its set-up, its trained parameters), so nothing here reads its private members."""

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

    def rank(self) -> int:
        return int(frameworks.horovod().rank())

    def allgather_object(self, obj: Any, name: str) -> List[Any]:
        with deadline(f"checkpoint: {name} on every rank", self.job.cfg.settings.timeout):
            return list(frameworks.horovod().allgather_object(obj, name=name))

    def broadcast_object(self, obj: Any, name: str) -> Any:
        with deadline(f"checkpoint: {name} from rank 0", self.job.cfg.settings.timeout):
            return frameworks.horovod().broadcast_object(obj, root_rank=0, name=name)
