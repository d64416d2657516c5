"""Refusing NaN and inf before they reach the PS tier.

A NaN or inf that a group pushes spreads to every group at the next exchange (the centre, the
average, the servers' weights), and from then on every model of the job is lost. So a leader
about to push checks, first, what its push is computed from:

* GradientPush: the packed group-mean gradients (``bucket.out``, exactly what is pushed);
* ModelAverage, EASGD, DiLoCo: the parameters ``x`` (blocking: packed into the bucket's
  broadcast buffer, which the group broadcast repacks anyway; overlapped: the snapshot
  ``x_t``). What they push (``x``, ``alpha (x - c)``, ``x_start - x``) is finite when ``x``
  is, since the centre and ``x_start`` come from the PS, where nothing non-finite gets in.

Cost, on leaders only, per exchange: one pack of the parameters per bucket (not for
GradientPush), one reduction (``mx.nd.sum``) per bucket on MXNet's engine, and one wait for all
of them, with one copy of a scalar per bucket to the host. The overlapped exchange thus waits
for the snapshot before it starts (the local update of that step), nothing more. Only when a
sum is not finite does the leader copy that bucket to the host to name the parameters
(a sum that overflowed while every value is finite is no error).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import mxnet as mx
import numpy as np

#: what the user can do about it, in every message
ADVICE = (
    "lower the learning rate, clip the gradients (e.g. optimizer_params "
    "{'clip_gradient': 1.0}), or check the input data for NaN/inf"
)


def _sums(flats: Sequence[Any]) -> np.ndarray[Any, Any]:
    """One sum per flat buffer (float32 at least, so float16 does not overflow), one wait."""
    sums = [mx.nd.sum(f if np.dtype(f.dtype).itemsize >= 4 else f.astype("float32")) for f in flats]
    return mx.nd.concat(*sums, dim=0).asnumpy() if sums else np.zeros(0)


def _named(flat: Any, names: Sequence[str], offsets: Sequence[int]) -> List[str]:
    """``name (NaN)`` / ``name (inf)`` for each parameter of ``flat`` holding one."""
    host = flat.asnumpy()
    found = []
    for name, lo, hi in zip(names, offsets, offsets[1:]):
        part = host[lo:hi]
        kinds = [k for k, bad in (("NaN", np.isnan(part)), ("inf", np.isinf(part))) if bad.any()]
        if kinds:
            found.append(f"{name!r} ({' and '.join(kinds)})")
    return found


def refusal(buckets: Sequence[Any], flats: Sequence[Any], step: int, what: str) -> Optional[str]:
    """None when every ``flats[i]`` (laid out as ``buckets[i].params``) is finite, else the
    message of the refusal, naming ``step`` and the parameters."""
    bad: List[str] = []
    for i, total in enumerate(_sums(flats)):
        if not np.isfinite(total):
            b = buckets[i]
            bad += _named(flats[i], b.names, b.params.offsets)
    if not bad:
        return None
    return (
        f"step {step}: {what} to push to the PS tier hold(s) NaN or inf in parameter(s) "
        f"{', '.join(bad)}; nothing was pushed: {ADVICE}"
    )
