"""Fused buffers: a list of NDArrays treated as one flat 1-D buffer (one PS key).

Layout: the arrays of a :class:`FusedBuffer` are laid out back to back, in list order, each
flattened in C (row-major) order. Array ``i`` occupies ``flat[offsets[i]:offsets[i + 1]]``;
``offsets[-1] == size``. Zero-size arrays take no room. All arrays of one buffer share one dtype
(float32, float64 or float16); group mixed-precision parameters per dtype, one buffer each. The
flat buffer may have another of these dtypes: ``pack(dtype="float16")`` casts for the wire
(round to nearest even) and ``unpack`` casts back to each array's dtype.

Every operation is one multithreaded pass of the C++ op in ``cpp/`` (``hvd_ps._fusion``), pushed
to MXNet's dependency engine with its reads and writes declared: it returns at once, runs after
every earlier write to what it reads or writes, and every later read waits for it, exactly like
an MXNet operator. Call ``.wait_to_read()`` or ``.asnumpy()`` on a result to wait for it.

============================================  ===============================================
method                                        per element ``i`` (``x`` = the packed arrays)
============================================  ===============================================
``pack(dtype)``                               ``flat[i] = x[i]``
``unpack(flat, alpha, beta)``                 ``x[i] = alpha * flat[i] + beta * x[i]``
``pack_axpby(ref, alpha, beta, dtype)``       ``out[i] = alpha * x[i] + beta * ref[i]``
``elastic(center, alpha, dtype)``             ``d[i] = alpha * (x[i] - center[i]); x[i] -= d[i]``
============================================  ===============================================

``unpack`` with ``beta=0`` never reads the old arrays (NaN there does not propagate).
``elastic`` subtracts ``d`` as stored in ``out`` (after any cast), so what a server adds to the
centre is exactly what the arrays lose. Arithmetic is in float32, or float64 if any operand is
float64.

The arrays must be distinct: the same array twice, or overlapping views, raise
:class:`~hvd_ps.errors.ConfigError`. Non-overlapping *views of one array* (``a[0:2]`` and
``a[2:4]``) share one engine variable, which MXNet's engine cannot take twice in one operation:
do not put them in one buffer. The buffer keeps references to the arrays; a result is valid
for arrays whose storage stays the same (in-place updates, as Gluon does, are fine).

Outputs: pass ``out=`` on a hot path. Without it, an operation takes its output from a small
pool of the buffer (at most :data:`POOL_SIZE` flat arrays per dtype, allocated on first use and
kept): a pooled array is handed out again only once no Python reference to it remains (MXNet's
engine orders the new write after any operation still reading it, e.g. a PS push). A slice or
``reshape`` of a result does not hold the result itself: keep the result while you use a view.

Example::

    params = [p.data() for p in net.collect_params().values()]
    buf = FusedBuffer(params)
    flat = buf.pack(dtype="float16")      # one key for the PS
    buf.unpack(pulled)                    # params = pulled, cast back to float32
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np

from ... import arguments, config, native
from ...errors import ConfigError, HvdPsError

__all__ = ["FusedBuffer", "WireCodec", "check_engine_errors"]

DTypeLike = Union[None, str, type, np.dtype[Any]]

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))

_PACK, _UNPACK, _PACK_AXPBY, _ELASTIC = 0, 1, 2, 3

#: flat outputs a buffer keeps per dtype for operations called without ``out``
POOL_SIZE = 2
# references to a pooled array nobody else holds: the pool's list, the loop variable, and
# sys.getrefcount's own argument
_UNREFERENCED = 3
_CPU_DEVICES = ("cpu", "cpu_pinned", "cpu_shared")


def _load_library() -> ctypes.CDLL:
    lib = native.load()  # libmxnet.so is already loaded by `import mxnet`: shared
    vp, i32, i64, f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    lib.hvdps_fusion_last_error.restype = ctypes.c_char_p
    lib.hvdps_fusion_last_error.argtypes = []
    lib.hvdps_fusion_push.restype = i32
    lib.hvdps_fusion_push.argtypes = [i32, ctypes.POINTER(vp), i32, vp, vp, f64, f64, i32]
    lib.hvdps_fusion_prepare.restype = i32
    lib.hvdps_fusion_prepare.argtypes = [ctypes.POINTER(vp), i32]
    lib.hvdps_fusion_take_engine_error.restype = i32
    lib.hvdps_fusion_take_engine_error.argtypes = []
    lib.hvdps_fusion_inject_engine_error.restype = None
    lib.hvdps_fusion_inject_engine_error.argtypes = [ctypes.c_char_p]
    lib.hvdps_fusion_threads.restype = i32
    lib.hvdps_fusion_threads.argtypes = [i32]
    lib.hvdps_fusion_has_f16c.restype = i32
    lib.hvdps_fusion_has_f16c.argtypes = []
    lib.hvdps_fusion_float_to_half.restype = None
    lib.hvdps_fusion_float_to_half.argtypes = [vp, vp, i64, i32]
    lib.hvdps_fusion_half_to_float.restype = None
    lib.hvdps_fusion_half_to_float.argtypes = [vp, vp, i64, i32]
    lib.hvdps_wire_push_axpby.restype = i32
    lib.hvdps_wire_push_axpby.argtypes = [
        ctypes.POINTER(vp), i32, vp, f64, f64, vp, vp, vp, ctypes.POINTER(i64), i32, i32, i32,
        i32, ctypes.c_uint32, i32,
    ]  # fmt: skip
    lib.hvdps_wire_push.restype = i32
    lib.hvdps_wire_push.argtypes = [
        i32,
        vp,
        vp,
        vp,
        ctypes.POINTER(i64),
        i32,
        i32,
        i32,
        i32,
        ctypes.c_uint32,
        i32,
    ]
    return lib


_LIB = _load_library()


def _dtype(dtype: DTypeLike, what: str) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"{what}={dtype!r} is not a dtype") from None
    if dt not in SUPPORTED_DTYPES:
        raise ConfigError(f"{what}={dt.name} is not supported; use float32, float64 or float16")
    return dt


def _check_array(arr: object, what: str) -> mx.nd.NDArray:
    """A dense CPU NDArray of a supported dtype, or ConfigError naming ``what``."""
    if not isinstance(arr, mx.nd.NDArray):
        raise ConfigError(f"{what} must be an mxnet NDArray, got {type(arr).__name__}")
    if arr.stype != "default":
        raise ConfigError(f"{what} has {arr.stype} storage; fused buffers take dense arrays")
    if arr.context.device_type not in _CPU_DEVICES:
        raise ConfigError(f"{what} is on {arr.context}; fused buffers take CPU arrays only")
    dt = np.dtype(arr.dtype)
    if dt not in SUPPORTED_DTYPES:
        raise ConfigError(f"{what} has dtype {dt.name}; supported: float32, float64, float16")
    return arr


def _scalar(value: float, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} is not a number") from None


class FusedBuffer:
    """A list of same-dtype CPU NDArrays packed into, and unpacked from, one flat buffer.

    Args:
        arrays: the NDArrays, all float32, all float64 or all float16, dense, on CPU. May be
            empty; zero-size arrays are allowed.
        threads: threads of each operation; ``None`` reads ``HVD_PS_FUSION_THREADS`` through
            :func:`hvd_ps.config.load`; 0 means ``min(4, CPU count)``. Operations under 256K
            elements always use one thread.

    Making a buffer waits for the arrays' pending writes and allocates their storage (once,
    so later operations can take the arrays' data pointers without racing an in-flight op).

    Raises:
        ConfigError: an array is not a dense CPU NDArray of a supported dtype, the dtypes are
            mixed (the message names them), or two arrays share memory.
    """

    def __init__(self, arrays: Sequence[mx.nd.NDArray], *, threads: Optional[int] = None) -> None:
        if isinstance(arrays, mx.nd.NDArray) or not isinstance(arrays, (list, tuple)):
            raise ConfigError(
                f"arrays must be a list or tuple of NDArrays, got {type(arrays).__name__}"
            )
        checked = [_check_array(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
        by_dtype: Dict[str, Any] = {}
        for i, a in enumerate(checked):
            by_dtype.setdefault(np.dtype(a.dtype).name, []).append(i)
        if len(by_dtype) > 1:
            found = "; ".join(
                f"{name} (arrays {', '.join(map(str, idx[:5]))}{', ...' if len(idx) > 5 else ''})"
                for name, idx in by_dtype.items()
            )
            raise ConfigError(
                f"FusedBuffer arrays must share one dtype, found {found}: group your arrays per "
                "dtype and make one FusedBuffer per group"
            )
        seen: Dict[int, int] = {}
        for i, a in enumerate(checked):
            key = a.handle.value
            if key in seen:
                raise ConfigError(f"arrays[{seen[key]}] and arrays[{i}] are the same NDArray")
            seen[key] = i
        if threads is None:
            threads = config.load().settings.fusion_threads
        arguments.integer("threads", threads, low=0, hint="0: automatic")

        self._arrays: List[mx.nd.NDArray] = checked
        self._dtype = np.dtype(checked[0].dtype) if checked else np.dtype(np.float32)
        offsets = [0]
        for a in checked:
            offsets.append(offsets[-1] + int(a.size))
        self._offsets: Tuple[int, ...] = tuple(offsets)
        self._threads = threads
        self._pool: Dict[str, List[mx.nd.NDArray]] = {}
        self._handles = (ctypes.c_void_p * max(1, len(checked)))(*[a.handle for a in checked])
        self._check(_LIB.hvdps_fusion_prepare(self._handles, len(checked)))

    # -- properties ------------------------------------------------------------------------------

    @property
    def arrays(self) -> List[mx.nd.NDArray]:
        """The arrays, in layout order (a copy of the list; the arrays themselves, not copies)."""
        return list(self._arrays)

    @property
    def size(self) -> int:
        """Total number of elements (the flat buffer's length)."""
        return self._offsets[-1]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The arrays' common dtype (float32 for an empty buffer)."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays' data (``size * dtype.itemsize``)."""
        return self.size * self._dtype.itemsize

    @property
    def offsets(self) -> Tuple[int, ...]:
        """``len(arrays) + 1`` boundaries: array i is ``flat[offsets[i]:offsets[i + 1]]``."""
        return self._offsets

    @property
    def threads(self) -> int:
        """Threads an operation of at least 256K elements uses."""
        return int(_LIB.hvdps_fusion_threads(self._threads))

    def __repr__(self) -> str:
        return (
            f"FusedBuffer({len(self._arrays)} arrays, size={self.size}, dtype={self._dtype.name})"
        )

    # -- operations ------------------------------------------------------------------------------

    def pack(self, dtype: DTypeLike = None, out: Optional[mx.nd.NDArray] = None) -> mx.nd.NDArray:
        """The arrays concatenated into a flat 1-D CPU NDArray, cast to ``dtype``.

        Args:
            dtype: dtype of the flat buffer (default: ``out``'s dtype, else the arrays' dtype).
            out: a preallocated 1-D CPU NDArray of ``size`` elements to write into (reusing one
                avoids allocating, and page-faulting in, a fresh buffer on every call).

        Returns:
            ``out`` or a new NDArray; returned at once, ready when MXNet's engine has run it.
        """
        out = self._output(dtype, out)
        self._push(_PACK, out, None, 1.0, 0.0)
        return out

    def unpack(self, flat: mx.nd.NDArray, alpha: float = 1.0, beta: float = 0.0) -> None:
        """Write ``alpha * flat + beta * array`` back into every array, in place.

        ``flat`` is a 1-D CPU NDArray of ``size`` elements of any supported dtype; it is cast to
        each array's dtype. With ``beta == 0`` the arrays' old contents are never read.
        """
        self._check_flat(flat, "flat")
        self._push(_UNPACK, flat, None, _scalar(alpha, "alpha"), _scalar(beta, "beta"))

    def pack_axpby(
        self,
        ref: mx.nd.NDArray,
        alpha: float,
        beta: float,
        dtype: DTypeLike = None,
        out: Optional[mx.nd.NDArray] = None,
    ) -> mx.nd.NDArray:
        """``out = alpha * arrays + beta * ref`` as a flat buffer, in one pass.

        ``ref`` is a flat 1-D CPU NDArray of ``size`` elements; ``out`` may be ``ref`` itself
        (updated in place). DiLoCo's pseudo-gradient ``x_start - x`` is
        ``pack_axpby(x_start_flat, alpha=-1.0, beta=1.0)``.
        """
        self._check_flat(ref, "ref")
        out = self._output(dtype, out)
        self._push(_PACK_AXPBY, out, ref, _scalar(alpha, "alpha"), _scalar(beta, "beta"))
        return out

    def elastic(
        self,
        center: mx.nd.NDArray,
        alpha: float,
        out: Optional[mx.nd.NDArray] = None,
        dtype: DTypeLike = None,
    ) -> mx.nd.NDArray:
        """EASGD's elastic step in one pass: ``d = alpha * (arrays - center)``, ``arrays -= d``.

        ``center`` is a flat 1-D CPU NDArray of ``size`` elements (must not be ``out``).
        Returns the flat ``d`` (``out`` if given), which the leader pushes for ``center += d``.
        """
        self._check_flat(center, "center")
        out = self._output(dtype, out)
        self._push(_ELASTIC, out, center, _scalar(alpha, "alpha"), 0.0)
        return out

    # -- internals -------------------------------------------------------------------------------

    def _check_flat(self, flat: object, what: str) -> mx.nd.NDArray:
        arr = _check_array(flat, what)
        if arr.ndim != 1 or arr.shape[0] != self.size:
            raise ConfigError(
                f"{what} must be a 1-D NDArray of {self.size} elements (this buffer's size), "
                f"got shape {arr.shape}"
            )
        return arr

    def _output(self, dtype: DTypeLike, out: Optional[mx.nd.NDArray]) -> mx.nd.NDArray:
        if out is None:
            dt = self._dtype if dtype is None else _dtype(dtype, "dtype")
            pool = self._pool.setdefault(dt.name, [])
            for arr in pool:
                if sys.getrefcount(arr) <= _UNREFERENCED:  # nobody holds it: reuse
                    return arr
            fresh = mx.nd.empty((self.size,), ctx=mx.cpu(), dtype=dt)
            if len(pool) < POOL_SIZE:
                pool.append(fresh)
            return fresh
        self._check_flat(out, "out")
        if dtype is not None and _dtype(dtype, "dtype") != np.dtype(out.dtype):
            raise ConfigError(
                f"dtype={np.dtype(dtype).name} does not match out's dtype "
                f"{np.dtype(out.dtype).name}"
            )
        return out

    def _push(
        self,
        kind: int,
        flat: mx.nd.NDArray,
        aux: Optional[mx.nd.NDArray],
        alpha: float,
        beta: float,
    ) -> None:
        rc = _LIB.hvdps_fusion_push(
            kind,
            self._handles,
            len(self._arrays),
            flat.handle,
            None if aux is None else aux.handle,
            alpha,
            beta,
            self._threads,
        )
        self._check(rc)

    @staticmethod
    def _check(rc: int) -> None:
        if rc != 0:
            message = (_LIB.hvdps_fusion_last_error() or b"").decode("utf-8", "replace")
            raise (ConfigError if rc == 1 else HvdPsError)(f"FusedBuffer: {message}")


def check_engine_errors() -> None:
    """Raise the failure of a fused-buffer op that ran on MXNet's engine since the last call.

    Such an op cannot fail its caller, who returned when it was queued; its outputs then hold
    stale values. Every later fused-buffer call raises it too, and the trainer and the PS
    client call this after each wait, so a failed op surfaces as an
    :class:`~hvd_ps.errors.HvdPsError` instead of wrong numbers.
    """
    FusedBuffer._check(_LIB.hvdps_fusion_take_engine_error())


class WireCodec:
    """The compressed wire of one bucket (format: :mod:`hvd_ps.ps.protocol`), on MXNet's engine.
    The wire buffer is a float32 array of ``nbytes / 4`` elements holding the parts' bytes.

    ``bounds``: the shard boundaries, ``0 = bounds[0] < ... < bounds[-1] = elements``. Both
    operations are one multithreaded pass of the fused op, queued like an MXNet operator."""

    def __init__(self, bounds: Sequence[int], bits: int, block: int, threads: int = 0) -> None:
        from ...ps import protocol

        protocol.check_wire(bits, block)
        self.bounds = [int(b) for b in bounds]
        if (
            len(self.bounds) < 2
            or self.bounds[0] != 0
            or any(b <= a for a, b in zip(self.bounds, self.bounds[1:]))
        ):
            raise ConfigError(f"bounds must rise from 0, got {self.bounds[:6]}")
        self.bits, self.block, self.threads = bits, block, threads
        self._bounds = (ctypes.c_int64 * len(self.bounds))(*self.bounds)
        #: each shard's byte range in the wire buffer
        self.offsets = [0]
        for lo, hi in zip(self.bounds, self.bounds[1:]):
            self.offsets.append(self.offsets[-1] + protocol.part_bytes(hi - lo, bits, block))

    @property
    def size(self) -> int:
        """Elements of the bucket."""
        return self.bounds[-1]

    @property
    def nbytes(self) -> int:
        """Bytes of the wire buffer (every shard's part)."""
        return self.offsets[-1]

    def encode(
        self,
        src: mx.nd.NDArray,
        residual: mx.nd.NDArray,
        wire: mx.nd.NDArray,
        sender: int,
        seq: int,
    ) -> None:
        """``v = src + residual`` into ``wire`` (header: ``sender``, ``seq``); ``residual = v -
        decoded``."""
        self._push(0, src, residual, wire, sender, seq)

    def encode_axpby(
        self,
        buf: FusedBuffer,
        ref: mx.nd.NDArray,
        alpha: float,
        beta: float,
        residual: mx.nd.NDArray,
        wire: mx.nd.NDArray,
        sender: int,
        seq: int,
        out: Optional[mx.nd.NDArray] = None,
    ) -> None:
        """:meth:`encode` of ``alpha * buf + beta * ref`` (``buf.pack_axpby``'s value, written
        to ``out`` too if given) in one pass: the strategy's math, the residual and the
        quantization read and write every element once. ``buf`` holds float32 arrays."""
        rc = _LIB.hvdps_wire_push_axpby(
            buf._handles,
            len(buf._arrays),
            ref.handle,
            _scalar(alpha, "alpha"),
            _scalar(beta, "beta"),
            residual.handle,
            wire.handle,
            None if out is None else out.handle,
            self._bounds,
            len(self.bounds),
            self.bits,
            self.block,
            sender,
            seq,
            self.threads,
        )
        FusedBuffer._check(rc)

    def decode_add(self, shadow: mx.nd.NDArray, wire: mx.nd.NDArray, seq: int) -> None:
        """``shadow += decoded`` for the servers' reply in ``wire``, which must answer exchange
        ``seq``; a reply that does not (or breaks the format) fails the op, whose error the
        next wait raises, and changes nothing."""
        self._push(1, shadow, None, wire, 0, seq)

    def _push(self, kind: int, data: Any, aux: Any, wire: Any, sender: int, seq: int) -> None:
        rc = _LIB.hvdps_wire_push(
            kind,
            data.handle,
            None if aux is None else aux.handle,
            wire.handle,
            self._bounds,
            len(self.bounds),
            self.bits,
            self.block,
            sender,
            seq,
            self.threads,
        )
        FusedBuffer._check(rc)
