"""The Gluon trainer's side of checkpoints: its parameters and its local optimizer's state and
counts, for :mod:`hvd_ps.train.core.resume` (the rest is :mod:`~hvd_ps.train.checkpointed`)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import mxnet as mx
import numpy as np

from .. import private_api
from ..errors import CheckpointError
from ..ps import protocol
from .checkpointed import Checkpointed
from .core import resume
from .core.schedule import Param


class GluonCheckpoint(Checkpointed):
    """A Gluon trainer as checkpoints see it (:class:`hvd_ps.train.core.resume.FrontEnd`): its
    parameters and its local optimizer's state and counts."""

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
