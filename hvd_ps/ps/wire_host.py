"""The compressed wire's codec on the servers: the same C++ kernels as the leaders' fused op
(hvd_ps's library, :mod:`hvd_ps.native`), on numpy arrays, multithreaded, on the calling
thread. :mod:`hvd_ps.ps.codec` is the same arithmetic in numpy (the format's reference, which
the tests hold these to); the servers use these because a round's decoding and its reply cost
them a pass over their shards each.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

import numpy as np

from .. import native
from ..errors import ConfigError, HvdPsError
from . import protocol

_lib: Optional[ctypes.CDLL] = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = native.load()
        vp, i32 = ctypes.c_void_p, ctypes.c_int
        lib.hvdps_wire_host.restype = i32
        lib.hvdps_wire_host.argtypes = [
            i32, vp, vp, vp, ctypes.POINTER(ctypes.c_int64), i32, i32, i32, i32, ctypes.c_uint32,
            i32,
        ]  # fmt: skip
        lib.hvdps_fusion_last_error.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def _call(kind: int, values: Any, residual: Any, wire: Any, bits: int, block: int,
          sender: int, seq: int, threads: int) -> None:  # fmt: skip
    lib = _library()
    bounds = (ctypes.c_int64 * 2)(0, values.size)
    rc = lib.hvdps_wire_host(
        kind, values.ctypes.data, None if residual is None else residual.ctypes.data,
        wire.ctypes.data, bounds, 2, bits, block, sender, seq, threads,
    )  # fmt: skip
    if rc != 0:
        message = (lib.hvdps_fusion_last_error() or b"").decode("utf-8", "replace")
        raise (ConfigError if rc == 1 else HvdPsError)(message)


def encode(values: Any, bits: int, block: int, sender: int, seq: int, threads: int = 0) -> Any:
    """The part carrying float32 ``values`` (one shard), as :func:`hvd_ps.ps.codec.encode`."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    part = np.empty(protocol.part_bytes(v.size, bits, block), np.uint8)
    _call(0, v, None, part, bits, block, sender, seq, threads)
    return part


def encode_change(state: Any, shadow: Any, out: Any, bits: int, block: int, seq: int,
                  threads: int = 0) -> None:  # fmt: skip
    """The servers' reply to exchange ``seq`` into ``out`` (the part's bytes, uint8): the
    encoded ``state - shadow``; ``shadow`` += its decoded values, exactly as a leader adds
    them to its copy. One pass; ``state`` and ``shadow`` are contiguous float32 arrays."""
    for name, a in (("state", state), ("shadow", shadow)):
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != state.size:
            raise ConfigError(f"{name} must be a contiguous float32 array of the shard's size")
    if out.dtype != np.uint8 or out.size != protocol.part_bytes(state.size, bits, block):
        raise ConfigError("out must be the uint8 bytes of one part of the shard")
    _call(3, state, shadow, out, bits, block, protocol.SERVERS, seq, threads)


def add_decoded(part: Any, out: Any, bits: int, block: int, seq: Optional[int] = None,
                threads: int = 0) -> None:  # fmt: skip
    """``out += decode(part)``, after checking every scale and code (and, with ``seq``, that
    the part is the servers' reply to exchange ``seq``); a bad part changes nothing and raises
    ``ConfigError`` saying what is wrong. ``out`` is a contiguous float32 array."""
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ConfigError("out must be a contiguous float32 array")
    p = np.ascontiguousarray(part, dtype=np.uint8)
    _call(2 if seq is None else 1, out, None, p, bits, block, 0, seq or 0, threads)
