"""FusedBuffer and the C++ fused-buffer op, against numpy references (no MPI)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.errors import ConfigError
from hvd_ps.train.core.fusion import _LIB, FusedBuffer

DTYPES = (np.float32, np.float64, np.float16)


def random_arrays(rng: np.random.Generator, count: int, dtype, zero_size_every: int = 0):
    """``count`` NDArrays of random shapes (1-4 dims), values in [-2, 2)."""
    arrays, host = [], []
    for i in range(count):
        shape = tuple(int(d) for d in rng.integers(1, 7, size=int(rng.integers(1, 5))))
        if zero_size_every and i % zero_size_every == 0:
            shape = shape[:-1] + (0,)
        values = (rng.random(shape) * 4 - 2).astype(dtype)
        host.append(values)
        arrays.append(mx.nd.array(values, dtype=dtype))
    return arrays, host


def concat(host, dtype=None):
    flat = np.concatenate([h.ravel() for h in host]) if host else np.zeros(0)
    return flat.astype(dtype or (host[0].dtype if host else np.float32))


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    count = [0, 1, 500, 37, 3, 211, 64, 499][seed]
    dtype = DTYPES[seed % 3]
    arrays, host = random_arrays(rng, count, dtype, zero_size_every=7 if seed % 2 else 0)
    buf = FusedBuffer(arrays)
    assert buf.size == sum(h.size for h in host)
    assert buf.dtype == np.dtype(dtype)
    assert buf.nbytes == buf.size * np.dtype(dtype).itemsize
    assert buf.offsets[0] == 0 and buf.offsets[-1] == buf.size and len(buf.offsets) == count + 1
    assert buf.arrays == arrays

    flat = buf.pack()
    assert flat.shape == (buf.size,) and flat.dtype == dtype and flat.context == mx.cpu()
    np.testing.assert_array_equal(flat.asnumpy(), concat(host))
    for i, h in enumerate(host):  # offsets describe the layout
        np.testing.assert_array_equal(
            flat.asnumpy()[buf.offsets[i] : buf.offsets[i + 1]], h.ravel()
        )

    for a in arrays:
        a[:] = 7
    buf.unpack(flat)
    for a, h in zip(arrays, host):
        assert a.shape == h.shape
        np.testing.assert_array_equal(a.asnumpy(), h)


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("wire", DTYPES)
def test_wire_cast_matches_numpy(src, wire):
    rng = np.random.default_rng(1)
    arrays, host = random_arrays(rng, 40, src)
    buf = FusedBuffer(arrays)
    flat = buf.pack(dtype=wire)
    assert flat.dtype == wire
    expected = concat(host).astype(wire)
    np.testing.assert_array_equal(flat.asnumpy(), expected)
    buf.unpack(flat)
    for a, h in zip(arrays, host):
        np.testing.assert_array_equal(a.asnumpy(), h.astype(wire).astype(src))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_multithreaded(threads):
    rng = np.random.default_rng(threads)
    shapes = [(300, 700), (5,), (1000, 333), (0, 4), (77, 1, 3)]  # ~543K elements: threaded
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    arrays = [mx.nd.array(h) for h in host]
    buf = FusedBuffer(arrays, threads=threads)
    np.testing.assert_array_equal(buf.pack().asnumpy(), concat(host))
    np.testing.assert_array_equal(buf.pack("float16").asnumpy(), concat(host, np.float16))
    flat = mx.nd.array(rng.standard_normal(buf.size).astype(np.float32))
    buf.unpack(flat, alpha=2.0, beta=-1.0)
    expected = 2.0 * flat.asnumpy() - concat(host)
    np.testing.assert_allclose(concat([a.asnumpy() for a in arrays]), expected, rtol=1e-6)


def test_zero_size_and_empty():
    empty = FusedBuffer([])
    assert empty.size == 0 and empty.offsets == (0,) and empty.dtype == np.float32
    out = empty.pack()
    assert out.shape == (0,)
    empty.unpack(mx.nd.empty((0,)))
    assert empty.pack_axpby(mx.nd.empty((0,)), -1.0, 1.0).shape == (0,)
    assert empty.elastic(mx.nd.empty((0,)), 0.5).shape == (0,)

    zeros = [mx.nd.empty((0,)), mx.nd.empty((3, 0, 2)), mx.nd.empty((0,))]
    buf = FusedBuffer(zeros)
    assert buf.size == 0 and buf.offsets == (0, 0, 0, 0)
    assert buf.pack(dtype="float16").shape == (0,)

    mixed = [mx.nd.empty((0, 5)), mx.nd.array([1.0, 2.0]), mx.nd.empty((0,)), mx.nd.array([3.0])]
    buf = FusedBuffer(mixed)
    assert buf.offsets == (0, 0, 2, 2, 3)
    np.testing.assert_array_equal(buf.pack().asnumpy(), [1, 2, 3])
    buf.unpack(mx.nd.array([4.0, 5.0, 6.0]))
    np.testing.assert_array_equal(mixed[1].asnumpy(), [4, 5])
    np.testing.assert_array_equal(mixed[3].asnumpy(), [6])
    assert mixed[0].shape == (0, 5)


def test_numpy_shape_semantics_scalar():
    with mx.util.np_shape(True):
        arrays = [mx.nd.array([1.0, 2.0]), mx.nd.ones((2, 0)), mx.nd.array([3.0])]
        buf = FusedBuffer(arrays)
        np.testing.assert_array_equal(buf.pack().asnumpy(), [1, 2, 3])


def test_pack_into_preallocated_out():
    arrays = [mx.nd.array([1.0, 2.0]), mx.nd.array([[3.0], [4.0]])]
    buf = FusedBuffer(arrays)
    out = mx.nd.zeros((4,), dtype="float16")
    assert buf.pack(out=out) is out
    np.testing.assert_array_equal(out.asnumpy(), [1, 2, 3, 4])
    assert buf.pack(dtype="float16", out=out) is out
    with pytest.raises(ConfigError, match="does not match"):
        buf.pack(dtype="float32", out=out)


# -- float16 -------------------------------------------------------------------------------------


def test_fp16_relative_error_bound():
    rng = np.random.default_rng(3)
    magnitude = np.exp2(rng.uniform(-14, 15.9, size=200_000))  # the normal float16 range
    values = (magnitude * rng.choice([-1, 1], size=magnitude.size)).astype(np.float32)
    buf = FusedBuffer([mx.nd.array(values[:123_457]), mx.nd.array(values[123_457:])])
    half = buf.pack(dtype=np.float16).asnumpy().astype(np.float64)
    rel = np.abs(half - values) / np.abs(values)
    assert rel.max() <= 2.0**-11


def _bit_patterns(rng):
    special = np.array(
        [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x00000001,
         0x33000000, 0x33000001, 0x337FFFFF, 0x38800000, 0x387FFFFF, 0x477FEFFF, 0x477FF000,
         0x477FE000, 0x477FF001, 0x3F801000, 0x3F803000, 0x3F800FFF, 0x38000000, 0x35000000],
        dtype=np.uint32,
    )  # fmt: skip
    # random bits, and values near float16 rounding ties in normal and subnormal range
    halves = rng.integers(0, 0x7C00, size=100_000).astype(np.uint16).view(np.float16)
    ties = halves.astype(np.float32).view(np.uint32) + np.uint32(0x1000)
    near = ties + rng.integers(-2, 3, size=ties.size).astype(np.uint32)
    rand = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([special, ties, near, rand, ties | np.uint32(0x80000000)])


@pytest.mark.parametrize("portable", [0, 1])
def test_float_to_half_exact(portable):
    if not portable and not _LIB.hvdps_fusion_has_f16c():
        pytest.skip("CPU has no F16C")
    bits = _bit_patterns(np.random.default_rng(4))
    src = bits.view(np.float32)
    dst = np.empty(src.size, dtype=np.uint16)
    _LIB.hvdps_fusion_float_to_half(src.ctypes.data, dst.ctypes.data, src.size, portable)
    with np.errstate(over="ignore"):
        expected = src.astype(np.float16)
    got = dst.view(np.float16)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint16), expected[~nan].view(np.uint16))


@pytest.mark.parametrize("portable", [0, 1])
def test_half_to_float_exact(portable):
    if not portable and not _LIB.hvdps_fusion_has_f16c():
        pytest.skip("CPU has no F16C")
    src = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    dst = np.empty(src.size, dtype=np.float32)
    _LIB.hvdps_fusion_half_to_float(src.ctypes.data, dst.ctypes.data, src.size, portable)
    expected = src.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(dst), nan)
    assert np.array_equal(dst[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def test_float64_to_half_single_rounding():
    rng = np.random.default_rng(5)
    halves = rng.integers(0, 0x7BFF, size=50_000).astype(np.uint16).view(np.float16)
    lo = halves.astype(np.float64)
    hi = np.nextafter(halves, np.float16(np.inf)).astype(np.float64)
    mid = (lo + hi) / 2  # exact ties, and doubles just off them that float32 would round onto
    eps = np.abs(mid) * 2.0**-40
    values = np.concatenate([mid, mid + eps, mid - eps])
    buf = FusedBuffer([mx.nd.array(values, dtype=np.float64)])
    np.testing.assert_array_equal(
        buf.pack(dtype=np.float16).asnumpy().view(np.uint16),
        values.astype(np.float16).view(np.uint16),
    )


# -- arithmetic ----------------------------------------------------------------------------------

AXPBY = [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-1.0, 1.0), (2.0, -0.5), (0.25, 0.75)]


UNPACK_DTYPES = [(np.float32, np.float32), (np.float32, np.float16), (np.float64, np.float32),
                 (np.float16, np.float32)]  # fmt: skip


@pytest.mark.parametrize("alpha,beta", AXPBY)
@pytest.mark.parametrize("dtype,flat_dtype", UNPACK_DTYPES)
def test_unpack_axpby(alpha, beta, dtype, flat_dtype):
    rng = np.random.default_rng(6)
    arrays, host = random_arrays(rng, 50, dtype)
    flat_np = rng.standard_normal(sum(h.size for h in host)).astype(flat_dtype)
    buf = FusedBuffer(arrays)
    buf.unpack(mx.nd.array(flat_np, dtype=flat_dtype), alpha=alpha, beta=beta)
    compute = np.float64 if np.float64 in (dtype, flat_dtype) else np.float32
    for i, (a, h) in enumerate(zip(arrays, host)):
        f = flat_np[buf.offsets[i] : buf.offsets[i + 1]].reshape(h.shape).astype(compute)
        expected = (compute(alpha) * f + compute(beta) * h.astype(compute)).astype(dtype)
        np.testing.assert_allclose(
            a.asnumpy(), expected, rtol=1e-6 if dtype != np.float16 else 1e-3
        )


def test_unpack_beta_zero_ignores_nan_destination():
    arrays = [mx.nd.full((4, 5), np.nan), mx.nd.full((300_000,), np.inf)]
    flat = mx.nd.arange(300_020)
    FusedBuffer(arrays, threads=2).unpack(flat, alpha=0.5, beta=0.0)
    got = np.concatenate([a.asnumpy().ravel() for a in arrays])
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, 0.5 * np.arange(300_020, dtype=np.float32))


@pytest.mark.parametrize("dtype,ref_dtype,out_dtype", [(np.float32,) * 3,
                         (np.float32, np.float32, np.float16), (np.float64, np.float32, np.float64),
                         (np.float16, np.float16, np.float32)])  # fmt: skip
def test_pack_axpby(dtype, ref_dtype, out_dtype):
    rng = np.random.default_rng(7)
    arrays, host = random_arrays(rng, 30, dtype)
    buf = FusedBuffer(arrays)
    ref_np = rng.standard_normal(buf.size).astype(ref_dtype)
    ref = mx.nd.array(ref_np, dtype=ref_dtype)
    for alpha, beta in [(-1.0, 1.0), (0.5, 2.0)]:
        out = buf.pack_axpby(ref, alpha, beta, dtype=out_dtype)
        assert out.dtype == out_dtype
        compute = np.float64 if np.float64 in (dtype, ref_dtype, out_dtype) else np.float32
        x = concat(host).astype(compute)
        expected = (compute(alpha) * x + compute(beta) * ref_np.astype(compute)).astype(out_dtype)
        np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-6, atol=1e-6)
    for a, h in zip(arrays, host):  # the arrays are only read
        np.testing.assert_array_equal(a.asnumpy(), h)


def test_pack_axpby_in_place_on_ref():
    arrays = [mx.nd.array([1.0, 2.0]), mx.nd.array([3.0])]
    ref = mx.nd.array([10.0, 20.0, 30.0])
    out = FusedBuffer(arrays).pack_axpby(ref, alpha=-1.0, beta=1.0, out=ref)  # DiLoCo: start - x
    assert out is ref
    np.testing.assert_array_equal(ref.asnumpy(), [9, 18, 27])


ELASTIC_DTYPES = [(np.float32, np.float32), (np.float32, np.float16), (np.float64, np.float64),
                  (np.float16, np.float16)]  # fmt: skip


@pytest.mark.parametrize("dtype,out_dtype", ELASTIC_DTYPES)
def test_elastic(dtype, out_dtype):
    rng = np.random.default_rng(8)
    arrays, host = random_arrays(rng, 25, dtype)
    buf = FusedBuffer(arrays)
    center_np = rng.standard_normal(buf.size).astype(dtype)
    alpha = 0.3
    d = buf.elastic(mx.nd.array(center_np, dtype=dtype), alpha, dtype=out_dtype)
    compute = np.float64 if dtype == np.float64 else np.float32
    x = concat(host).astype(compute)
    d_expected = (compute(alpha) * (x - center_np.astype(compute))).astype(out_dtype)
    tol = 1e-6 if out_dtype != np.float16 and dtype != np.float16 else 2e-3
    np.testing.assert_allclose(d.asnumpy(), d_expected, rtol=tol, atol=tol)
    # x lost exactly the d that was written out (after its cast)
    x_new = concat([a.asnumpy() for a in arrays]).astype(compute)
    expected = (x - d.asnumpy().astype(compute)).astype(dtype)
    np.testing.assert_allclose(x_new, expected, rtol=tol, atol=tol)


# -- MXNet engine ordering -----------------------------------------------------------------------


def _slow_product(n=700):
    """An NDArray whose value an async MXNet op is still computing when this returns."""
    a = mx.nd.ones((n, n)) / n
    r = mx.nd.ones((n, n))
    for _ in range(6):
        r = mx.nd.dot(r, a)  # stays all ones, takes a while
    return r


def test_pack_waits_for_in_flight_write():
    target = mx.nd.zeros((700, 700))
    small = mx.nd.zeros((3,))
    mx.nd.waitall()
    _slow_product().copyto(target)  # async write into target
    small[:] = 5  # async too
    buf = FusedBuffer([target, small])
    flat = buf.pack()
    got = flat.asnumpy()
    np.testing.assert_allclose(got[:-3], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(got[-3:], 5)


def test_write_after_pack_does_not_leak_into_it():
    slow = _slow_product()
    a = mx.nd.zeros((700, 700))
    slow.copyto(a)  # pending write
    flat = FusedBuffer([a]).pack()
    a[:] = -3  # later write: must run after the pack's read
    np.testing.assert_allclose(flat.asnumpy(), 1.0, rtol=1e-5)
    assert (a.asnumpy() == -3).all()


def test_unpack_waits_for_flat_and_is_seen_by_readers():
    arrays = [mx.nd.zeros((700, 350)), mx.nd.zeros((350, 700))]
    flat = _slow_product().reshape((-1,))  # still being computed
    buf = FusedBuffer(arrays)
    buf.unpack(flat, alpha=2.0)
    total = (arrays[0].sum() + arrays[1].sum()).asscalar()  # an MXNet reader, after unpack
    assert total == pytest.approx(2.0 * 700 * 700, rel=1e-5)


def test_elastic_ordering_with_engine_ops():
    x = mx.nd.zeros((700, 700))
    _slow_product().copyto(x)
    center = mx.nd.zeros((700 * 700,))
    d = FusedBuffer([x]).elastic(center, 0.25)
    center += d  # the server-side update, as an engine op after elastic
    np.testing.assert_allclose(x.asnumpy(), 0.75, rtol=1e-5)
    np.testing.assert_allclose(center.asnumpy(), 0.25, rtol=1e-5)


# -- bad input -----------------------------------------------------------------------------------


def test_mixed_dtypes_rejected_naming_them():
    arrays = [mx.nd.zeros((2,)), mx.nd.zeros((2,), dtype="float16"), mx.nd.zeros((1,))]
    with pytest.raises(ConfigError, match="float32.*float16.*group your arrays per dtype"):
        FusedBuffer(arrays)


class _GpuLooking(mx.nd.NDArray):
    __slots__ = ()

    @property
    def context(self):
        return mx.gpu(0)


def test_non_cpu_rejected():
    a = mx.nd.zeros((3,))
    a.__class__ = _GpuLooking
    with pytest.raises(ConfigError, match="CPU"):
        FusedBuffer([a])
    buf = FusedBuffer([mx.nd.zeros((3,))])
    with pytest.raises(ConfigError, match="CPU"):
        buf.unpack(a)


def test_bad_flat_rejected_naming_expected_length():
    buf = FusedBuffer([mx.nd.zeros((2, 3)), mx.nd.zeros((4,))])
    with pytest.raises(ConfigError, match="10 elements"):
        buf.unpack(mx.nd.zeros((9,)))
    with pytest.raises(ConfigError, match="10 elements"):
        buf.unpack(mx.nd.zeros((2, 5)))
    with pytest.raises(ConfigError, match="10 elements"):
        buf.pack(out=mx.nd.zeros((11,)))
    with pytest.raises(ConfigError, match="10 elements"):
        buf.pack_axpby(mx.nd.zeros((3,)), 1.0, 1.0)
    with pytest.raises(ConfigError, match="10 elements"):
        buf.elastic(mx.nd.zeros((10, 1)), 0.5)


def test_unsupported_dtype_rejected():
    with pytest.raises(ConfigError, match="int32"):
        FusedBuffer([mx.nd.zeros((2,), dtype="int32")])
    with pytest.raises(ConfigError, match="uint8"):
        FusedBuffer([mx.nd.zeros((2,), dtype="uint8")])
    buf = FusedBuffer([mx.nd.zeros((2,))])
    with pytest.raises(ConfigError, match="int64"):
        buf.pack(dtype="int64")
    with pytest.raises(ConfigError, match="int32"):
        buf.unpack(mx.nd.zeros((2,), dtype="int32"))
    with pytest.raises(ConfigError, match="not a dtype"):
        buf.pack(dtype="no-such-type")


def test_non_ndarray_rejected():
    with pytest.raises(ConfigError, match="NDArray"):
        FusedBuffer([np.zeros(3, dtype=np.float32)])
    with pytest.raises(ConfigError, match="list or tuple"):
        FusedBuffer(mx.nd.zeros((3,)))
    buf = FusedBuffer([mx.nd.zeros((3,))])
    with pytest.raises(ConfigError, match="NDArray"):
        buf.unpack(np.zeros(3, dtype=np.float32))
    with pytest.raises(ConfigError, match="alpha"):
        buf.unpack(mx.nd.zeros((3,)), alpha="x")


def test_sparse_rejected():
    sparse = mx.nd.zeros((4, 2)).tostype("row_sparse")
    with pytest.raises(ConfigError, match="row_sparse"):
        FusedBuffer([sparse])
    buf = FusedBuffer([mx.nd.zeros((8,))])
    with pytest.raises(ConfigError, match="csr"):
        buf.unpack(mx.nd.zeros((1, 8)).tostype("csr"))


def test_shared_memory_rejected_not_deadlocked():
    a = mx.nd.zeros((4, 3))
    with pytest.raises(ConfigError, match="same NDArray"):
        FusedBuffer([a, a])
    with pytest.raises(ConfigError, match="share memory"):
        FusedBuffer([a, a.reshape((12,))])  # a view: same storage
    x = mx.nd.zeros((5,))
    flat = mx.nd.zeros((5,))
    with pytest.raises(ConfigError, match="centre must not be the output"):
        FusedBuffer([x]).elastic(flat, 0.5, out=flat)
    with pytest.raises(ConfigError, match="also given as a flat operand"):
        FusedBuffer([x]).unpack(x)


def test_threads_setting(monkeypatch):
    expected = min(4, os.cpu_count() or 1)
    monkeypatch.delenv("HVD_PS_FUSION_THREADS", raising=False)
    assert FusedBuffer([]).threads == expected
    monkeypatch.setenv("HVD_PS_FUSION_THREADS", "3")
    assert FusedBuffer([]).threads == 3
    assert FusedBuffer([], threads=1).threads == 1
    with pytest.raises(ConfigError):
        FusedBuffer([], threads=-1)


def test_import_without_library_says_how_to_build(tmp_path):
    pkg = os.path.dirname(os.path.abspath(sys.modules["hvd_ps"].__file__))
    shutil.copytree(pkg, tmp_path / "hvd_ps", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "try:\n    import hvd_ps.train.core.fusion\n"
        "except ImportError as e:\n    print('IMPORTERROR', e)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert "IMPORTERROR" in run.stdout, run.stdout + run.stderr
    assert "pip install --no-build-isolation -e ." in run.stdout
    assert "scripts/test.sh" in run.stdout


def test_library_exports():
    assert ctypes.c_int(_LIB.hvdps_fusion_threads(2)).value == 2


def test_plan_buckets_groups_by_dtype_and_caps_bytes():
    from hvd_ps.train.core.buckets import plan_buckets

    a = [
        mx.nd.zeros((10,)),  # 40 B float32
        mx.nd.zeros((10,), dtype="float16"),  # 20 B
        mx.nd.zeros((30,)),  # 120 B, larger than the cap below: a bucket of its own
        mx.nd.zeros((5,)),  # 20 B
        mx.nd.zeros((2,), dtype="float16"),  # 4 B
        mx.nd.zeros((4,)),  # 16 B
    ]
    assert plan_buckets(a, 0) == [[0, 2, 3, 5], [1, 4]]
    assert plan_buckets(a, 100) == [[0], [2], [3, 5], [1, 4]]
    assert plan_buckets(a, 10**9) == [[0, 2, 3, 5], [1, 4]]
    assert plan_buckets([], 100) == []
    every = sorted(i for b in plan_buckets(a, 50) for i in b)
    assert every == list(range(len(a)))
