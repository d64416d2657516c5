"""The PyTorch front end's side of checkpoints: its parameters and its local optimizer's
state, for :mod:`hvd_ps.train.core.resume` (the same files as the Gluon trainer's; the rest is
:mod:`~hvd_ps.train.checkpointed`).

The local optimizer's state is ``optimizer.state``: per trained parameter (its index among
the optimizer's parameters) a dict of tensors and numbers. Each tensor travels as one array,
``<index>/<leaf>``, leaves in the order of the dict's sorted keys; the keys themselves, and the
state's numbers, travel in the group's counts. A resumed optimizer takes them back as its
``optimizer.state``; its hyperparameters (``param_groups``) are the ones the script passes
again, as with ``optimizer.load_state_dict``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch

from ..errors import CheckpointError
from .checkpointed import Checkpointed
from .core.schedule import Param

#: a state value that is neither a tensor nor a number (e.g. SGD's momentum before a step)
EMPTY = "none"


class TorchCheckpoint(Checkpointed):
    """A PyTorch distributed optimizer as checkpoints see it
    (:class:`hvd_ps.train.core.resume.FrontEnd`): its parameters and its ``optimizer.state``
    (``trainer`` is the optimizer)."""

    def parameters(self) -> List[Param]:
        return self.trained()

    def set_parameters(self, values: Dict[str, np.ndarray[Any, Any]]) -> None:
        with torch.no_grad():
            for p in self.trained():
                p.data.get().copy_(torch.from_numpy(np.ascontiguousarray(values[p.name])))

    def _states(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        for index, p in enumerate(self.trained()):
            yield index, self.trainer.state.get(p.data.param, {})

    def optimizer_arrays(self) -> Iterator[Tuple[str, np.ndarray[Any, Any]]]:
        for index, state in self._states():
            tensors = [k for k in sorted(state) if isinstance(state[k], torch.Tensor)]
            for leaf, key in enumerate(tensors):
                yield f"{index}/{leaf}", state[key].detach().cpu().numpy()

    def optimizer_counts(self) -> Dict[str, Any]:
        """Per parameter index: the names of its state's tensors (in leaf order) and its
        other values (numbers, or :data:`EMPTY`)."""
        out: Dict[str, Any] = {}
        for index, state in self._states():
            tensors = [k for k in sorted(state) if isinstance(state[k], torch.Tensor)]
            others = {}
            for k in sorted(set(state) - set(tensors)):
                value = state[k]
                if value is not None and not isinstance(value, (bool, int, float)):
                    raise CheckpointError(
                        f"the local optimizer's state {k!r} of parameter {index} is a "
                        f"{type(value).__name__}; checkpoints keep tensors and numbers"
                    )
                others[k] = EMPTY if value is None else value
            out[str(index)] = {"tensors": tensors, "values": others}
        return {"torch_state": out}

    def load_optimizer(
        self, saved: Dict[int, Dict[int, np.ndarray[Any, Any]]], counts: Dict[str, Any]
    ) -> None:
        trained = self.trained()
        kept = counts.get("torch_state")
        if not isinstance(kept, dict):
            raise CheckpointError(
                "the checkpoint holds no PyTorch optimizer state: it was saved by another "
                "front end; resume it with the one that saved it"
            )
        for index_text, entry in kept.items():
            index = int(index_text)
            names, leaves = entry["tensors"], saved.get(index, {})
            if len(names) != len(leaves):
                raise CheckpointError(
                    f"parameter {index}'s optimizer state names {len(names)} tensors, the "
                    f"checkpoint holds {len(leaves)}: it was altered"
                )
            state: Dict[str, Any] = {}
            for leaf, key in enumerate(names):
                state[key] = torch.from_numpy(np.array(leaves[leaf]))
            for key, value in entry["values"].items():
                state[key] = None if value == EMPTY else value
            if state:
                self.trainer.state[trained[index].data.param] = state
