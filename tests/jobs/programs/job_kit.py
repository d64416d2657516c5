"""What the job programs share: :func:`say`, the reference model (:func:`reference_net`) and a
step on its data (:func:`backward`, :func:`step`), and ``ref`` (tests/reference.py).

A program imports it from its own folder (Python puts a script's folder first on
``sys.path``); a program that sets thread variables does so before this import, which loads
MXNet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: reference.py

import mxnet as mx
import reference as ref

import hvd_ps

__all__ = ["ref", "say", "reference_net", "backward", "step"]


def say(line: str) -> None:
    """One whole line in one write to stdout.

    Open MPI tags every chunk a rank writes with ``[1,r]<stdout>:``; ``print`` writes the text
    and its newline separately when Python runs unbuffered (``PYTHONUNBUFFERED=1``), so a line
    could come out as two tagged pieces and a test reading it would see ``0.17[1,1]<stdout>:``.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def reference_net(prefix: Optional[str] = None) -> mx.gluon.nn.Dense:
    """The reference linear model (``ref.OUT`` x ``ref.IN``) at ``ref.initial()``, broadcast
    from rank 0 (hvd_ps.init first)."""
    net = mx.gluon.nn.Dense(ref.OUT, in_units=ref.IN, prefix=prefix)
    net.initialize()
    w0, b0 = ref.initial()
    net.weight.set_data(mx.nd.array(w0))
    net.bias.set_data(mx.nd.array(b0))
    hvd_ps.broadcast_parameters(net.collect_params())
    return net


def backward(net: mx.gluon.nn.Dense, data: int, t: int) -> None:
    """The gradients of the squared loss on ``ref.batch(data, t)`` (reference rank ``data``'s
    batch of step ``t``)."""
    x, y = ref.batch(data, t)
    with mx.autograd.record():
        loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum(axis=1)
    loss.backward()


def step(net: mx.gluon.nn.Dense, trainer: Any, data: int, t: int) -> None:
    """:func:`backward`, then the trainer's step on the batch."""
    backward(net, data, t)
    trainer.step(ref.BATCH)
