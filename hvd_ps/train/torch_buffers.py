"""PyTorch tensors as the core's flat buffers, and the group's broadcast through horovod.torch
(the PyTorch front end's :class:`~hvd_ps.train.core.interfaces.Flat` and
:class:`~hvd_ps.train.core.interfaces.Group`).

The core keeps its buffers (what a leader pushes and pulls, the snapshot of an overlapped
exchange, the broadcast buffers) as flat MXNet arrays on the CPU: the PS client and the fused
op work on them. Torch reads and writes them in place through a view of the same memory
(DLPack, no copy), taken once MXNet's engine has finished with the array. Torch's kernels run
on the calling thread, so each method here is done when it returns; MXNet work queued on an
array afterwards sees what it wrote.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.utils.dlpack

import mxnet as mx  # isort: skip  (after torch: see docs/troubleshooting.md)
import numpy as np

from ..deadline import deadline
from ..errors import ConfigError


def for_write(a: Any) -> torch.Tensor:
    """A torch view of the flat MXNet array ``a``, once no MXNet work reads or writes it."""
    return torch.utils.dlpack.from_dlpack(a.to_dlpack_for_write())


def for_read(a: Any) -> torch.Tensor:
    """A torch view of the flat MXNet array ``a``, once no MXNet work writes it (read only)."""
    return torch.utils.dlpack.from_dlpack(a.to_dlpack_for_read())


class Tensor:
    """A trained parameter, or its gradient, as the core sees it: its shape and numpy dtype,
    and the torch tensor itself, looked up at each use (``optimizer.zero_grad()`` may drop a
    gradient and the next backward make a new one; a dropped one reads as zeros)."""

    def __init__(self, param: torch.nn.Parameter, grad: bool) -> None:
        self.param, self.grad = param, grad
        self.shape: Tuple[int, ...] = tuple(param.shape)
        self.dtype = np.dtype(str(param.dtype).replace("torch.", ""))
        self.size = int(param.numel())

    def get(self) -> torch.Tensor:
        """The tensor now (the parameter's data, detached, or its gradient)."""
        if not self.grad:
            return self.param.detach()
        if self.param.grad is None:
            return torch.zeros_like(self.param)
        return self.param.grad.detach()

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        """The tensor's memory as a numpy array (no copy): what checkpoints write."""
        return self.get().numpy()


class TorchFlat:
    """The tensors of one bucket (:class:`Tensor`, one dtype) as one flat buffer of
    :attr:`size` elements, element ``offsets[i]`` onwards holding tensor ``i`` in row-major
    order; ``out``, ``flat``, ``ref`` and ``center`` are flat MXNet arrays of that size."""

    def __init__(self, arrays: List[Any], threads: int) -> None:
        if not arrays:
            raise ConfigError("a flat buffer needs at least one tensor")
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) != 1:
            raise ConfigError(f"one flat buffer holds one dtype, got {sorted(map(str, dtypes))}")
        self._arrays = list(arrays)
        offsets = [0]
        for a in arrays:
            offsets.append(offsets[-1] + a.size)
        self.offsets: Tuple[int, ...] = tuple(offsets)
        self._threads = threads

    @property
    def arrays(self) -> List[Any]:
        return self._arrays

    @property
    def size(self) -> int:
        return self.offsets[-1]

    @property
    def dtype(self) -> Any:
        return self._arrays[0].dtype

    @property
    def threads(self) -> int:
        return self._threads

    def _parts(self) -> List[Tuple[torch.Tensor, int, int]]:
        return [
            (a.get(), lo, hi) for a, lo, hi in zip(self._arrays, self.offsets, self.offsets[1:])
        ]

    def _out(self, dtype: Any, out: Any) -> Any:
        if out is None:
            return mx.nd.empty((self.size,), dtype=dtype or self.dtype)
        if out.shape != (self.size,):
            raise ConfigError(f"out must be a flat array of {self.size} elements, got {out.shape}")
        return out

    def pack(self, dtype: Any = None, out: Any = None) -> Any:
        """``out = arrays`` (cast to ``out``'s dtype)."""
        out = self._out(dtype, out)
        view = for_write(out)
        with torch.no_grad():
            for t, lo, hi in self._parts():
                view[lo:hi].copy_(t.reshape(-1))
        return out

    def unpack(self, flat: Any, alpha: float = 1.0, beta: float = 0.0) -> None:
        """``arrays = alpha * flat + beta * arrays`` (with ``beta == 0`` the arrays' old
        values are never read)."""
        view = for_read(flat)
        with torch.no_grad():
            for t, lo, hi in self._parts():
                src = view[lo:hi].view(t.shape).to(t.dtype)
                if beta == 0.0:
                    t.copy_(src if alpha == 1.0 else src * alpha)
                else:
                    t.copy_(torch.add(t * beta, src, alpha=alpha))

    def pack_axpby(
        self, ref: Any, alpha: float, beta: float, dtype: Any = None, out: Any = None
    ) -> Any:
        """``out = alpha * arrays + beta * ref`` (``out`` may be ``ref``)."""
        out = self._out(dtype, out)
        target = for_write(out)
        source = target if ref is out else for_read(ref)
        with torch.no_grad():
            for t, lo, hi in self._parts():
                # in the tensors' precision, rounded once into out's dtype (a float16 wire)
                x = t.reshape(-1)
                ref_part = source[lo:hi].to(x.dtype)
                value = x * alpha if beta == 0.0 else torch.add(x * alpha, ref_part, alpha=beta)
                target[lo:hi].copy_(value)
        return out

    def elastic(self, center: Any, alpha: float, out: Any = None, dtype: Any = None) -> Any:
        """EASGD's elastic step: ``d = alpha * (arrays - center)``, ``arrays -= d``; returns
        ``d`` in ``out``."""
        out = self._out(dtype, out)
        c = for_read(center)
        target = for_write(out)
        with torch.no_grad():
            for t, lo, hi in self._parts():
                d = (t - c[lo:hi].view(t.shape).to(t.dtype)) * alpha
                t.sub_(d)
                target[lo:hi].copy_(d.reshape(-1))
        return out


def fuse(arrays: List[Any], threads: int) -> TorchFlat:
    """How the PyTorch front end fuses a bucket's tensors (the schedule's ``fuse``)."""
    return TorchFlat(arrays, threads)


class TorchGroup:
    """The group's broadcast through horovod.torch, on the group's process set: each flat
    MXNet array is broadcast in place through a torch view of its memory."""

    def __init__(self, process_set: Any, timeout: float) -> None:
        self.process_set = process_set
        self.timeout = timeout

    def broadcast(self, arrays: List[Any], root: int, names: List[str], what: str) -> None:
        import horovod.torch as hvd

        with deadline(what, self.timeout):
            for a, name in zip(arrays, names):
                hvd.broadcast_(
                    for_write(a), root_rank=root, name=name, process_set=self.process_set
                )
