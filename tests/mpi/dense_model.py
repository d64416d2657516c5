"""The MPI tests' model: tests/reference.py's linear model as a Gluon ``Dense`` layer."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402


def reference_net(prefix: str, shifted: bool = False):
    """A ``Dense`` layer holding the reference's initial parameters, named ``<prefix>_...``;
    ``shifted`` moves them away (a run that loads a checkpoint must not start right by luck)."""
    import mxnet as mx

    net = mx.gluon.nn.Dense(ref.OUT, in_units=ref.IN, prefix=f"{prefix}_")
    net.initialize()
    w0, b0 = ref.initial()
    if shifted:
        w0, b0 = w0 + 1.0, b0 - 2.0
    net.weight.set_data(mx.nd.array(w0))
    net.bias.set_data(mx.nd.array(b0))
    return net
