"""FusedBuffer outputs without ``out=``: a small pool, never handing out an array still held."""

import mxnet as mx
import numpy as np

from hvd_ps.train.core.fusion import POOL_SIZE, FusedBuffer


def _buffer():
    arrays = [mx.nd.array(np.arange(3, dtype=np.float32)), mx.nd.ones((2, 2)) * 7]
    return arrays, FusedBuffer(arrays)


def test_a_result_still_held_is_never_handed_out_again():
    arrays, buf = _buffer()
    held = [buf.pack() for _ in range(POOL_SIZE + 2)]
    handles = {a.handle.value for a in held}
    assert len(handles) == POOL_SIZE + 2  # every call got its own array
    for flat in held:
        np.testing.assert_array_equal(flat.asnumpy(), [0, 1, 2, 7, 7, 7, 7])
    arrays[0][:] = 5
    newest = buf.pack()
    assert newest.handle.value not in handles
    np.testing.assert_array_equal(held[0].asnumpy(), [0, 1, 2, 7, 7, 7, 7])  # untouched


def test_a_dropped_result_is_reused_and_holds_the_new_values():
    arrays, buf = _buffer()
    first = buf.pack()
    handle = first.handle.value
    del first
    arrays[1][:] = -1
    again = buf.pack()
    assert again.handle.value == handle
    np.testing.assert_array_equal(again.asnumpy(), [0, 1, 2, -1, -1, -1, -1])


def test_the_pool_is_per_dtype_and_bounded():
    _arrays, buf = _buffer()
    a32 = buf.pack()
    a16 = buf.pack(dtype="float16")
    assert np.dtype(a16.dtype) == np.float16 and np.dtype(a32.dtype) == np.float32
    h16 = a16.handle.value
    del a16
    assert buf.pack(dtype="float16").handle.value == h16  # float32 one still held: not taken
    extra = [buf.pack() for _ in range(2 * POOL_SIZE)]
    assert len(buf._pool["float32"]) == POOL_SIZE and len(extra) == 2 * POOL_SIZE


def test_pack_axpby_and_elastic_without_out_are_pooled_and_correct():
    arrays, buf = _buffer()
    ref = mx.nd.ones((buf.size,))
    d = buf.pack_axpby(ref, 2.0, -1.0)
    np.testing.assert_array_equal(d.asnumpy(), [-1, 1, 3, 13, 13, 13, 13])
    h = d.handle.value
    del d
    e = buf.elastic(ref, 0.5)
    assert e.handle.value == h
    np.testing.assert_allclose(e.asnumpy(), [-0.5, 0, 0.5, 3, 3, 3, 3])
    np.testing.assert_allclose(arrays[0].asnumpy(), [0.5, 1, 1.5])
