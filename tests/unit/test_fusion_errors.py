"""A fused-buffer op that fails on MXNet's engine surfaces as an HvdPsError, never as silently
stale numbers: at the next call into the op's library, or at check_engine_errors() after a wait.
The failure is provoked with the library's test hook (the next engine op fails)."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.errors import ConfigError, HvdPsError
from hvd_ps.train.core import fusion
from hvd_ps.train.core.fusion import FusedBuffer


def fail_next_op(message: str) -> None:
    fusion._LIB.hvdps_fusion_inject_engine_error(message.encode())


def buffer():
    arrays = [mx.nd.array([1.0, 2.0]), mx.nd.array([[3.0, 4.0], [5.0, 6.0]])]
    return arrays, FusedBuffer(arrays, threads=1)


def test_failed_op_is_raised_after_the_wait_and_leaves_no_silent_result():
    fusion.check_engine_errors()  # nothing pending
    _, buf = buffer()
    out = mx.nd.full((6,), -1.0)
    fail_next_op("disk on fire")
    buf.pack(out=out)  # queued: returns at once
    out.wait_to_read()
    np.testing.assert_array_equal(out.asnumpy(), np.full(6, -1.0))  # it did not run
    with pytest.raises(HvdPsError, match="an earlier fused-buffer op failed: .*disk on fire"):
        fusion.check_engine_errors()
    fusion.check_engine_errors()  # raised once, then cleared
    np.testing.assert_array_equal(buf.pack().asnumpy(), [1, 2, 3, 4, 5, 6])


def test_failed_op_is_raised_by_the_next_call():
    arrays, buf = buffer()
    flat = buf.pack()
    flat.wait_to_read()
    fail_next_op("injected")
    buf.unpack(flat, alpha=2.0)
    mx.nd.waitall()
    with pytest.raises(HvdPsError, match="hvd_ps_fused_unpack: injected") as info:
        buf.pack()
    assert not isinstance(info.value, ConfigError)
    np.testing.assert_array_equal(arrays[0].asnumpy(), [1.0, 2.0])  # the unpack never ran
    buf.unpack(flat, alpha=2.0)  # the library works again afterwards
    np.testing.assert_array_equal(arrays[1].asnumpy(), [[6.0, 8.0], [10.0, 12.0]])
