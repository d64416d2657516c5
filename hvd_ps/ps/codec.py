"""The compressed wire's parts in numpy: encode, decode, read a header (the format is in
:mod:`hvd_ps.ps.protocol`). The servers use it on what arrives; the leaders' fused op does the
same arithmetic in C++, and the tests hold the two to the same bytes.

Whatever arrives is untrusted: :func:`read` checks every header field against what the key
expects and raises :class:`WireError` naming the field, before a byte of the blocks is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np
from numpy.typing import NDArray

from . import protocol

Array = NDArray[Any]

_HEADER = struct.Struct("<2sBBHHII")
#: the smallest block maximum that is quantized (below it, a block is sent as zeros)
TINY = np.float32(2.0**-126)


class WireError(ValueError):
    """A part that does not follow the format, or not the one its key expects."""


@dataclass(frozen=True)
class Header:
    bits: int
    sender: int
    block: int
    seq: int
    n: int


def encode(values: Array, bits: int, block: int, sender: int, seq: int) -> Tuple[Array, Array]:
    """The part carrying float32 ``values``, and what it decodes to (float32)."""
    v = np.ascontiguousarray(values, dtype=np.float32).ravel()
    n = v.size
    nb = -(-n // block)
    padded = np.zeros(nb * block, np.float32)
    padded[:n] = v
    blocks = padded.reshape(nb, block)
    q = np.float32(protocol.levels(bits))
    amax = np.abs(blocks).max(axis=1) if nb else np.zeros(0, np.float32)
    live = amax >= TINY
    inv = np.zeros(nb, np.float32)
    inv[live] = q / amax[live]
    codes = np.clip(np.rint(blocks * inv[:, None]), -q, q).astype(np.int8)
    scales = np.zeros(nb, np.float32)
    scales[live] = amax[live] / q
    decoded = (codes.astype(np.float32) * scales[:, None]).ravel()[:n]
    out = np.empty(protocol.part_bytes(n, bits, block), np.uint8)
    out[: protocol.HEADER_BYTES] = np.frombuffer(
        _HEADER.pack(protocol.MAGIC, 1, bits, sender, block, seq, n), np.uint8
    )
    recs = out[protocol.HEADER_BYTES :].reshape(nb, protocol.block_bytes(bits, block))
    recs[:, :4] = scales.view(np.uint8).reshape(nb, 4)
    if bits == 8:
        recs[:, 4:] = codes.view(np.uint8)
    else:
        nib = codes.view(np.uint8) & 0x0F
        recs[:, 4:] = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return out, decoded


def read(part: Array, bits: int, block: int, n: int) -> Header:
    """The header of ``part``, checked: the magic, the version, ``bits``, ``block`` and ``n``
    the key expects, and a length that matches them. Raises :class:`WireError`."""
    size = protocol.part_bytes(n, bits, block)
    if part.size != size:
        raise WireError(f"a part of {part.size} bytes where {size} were expected")
    return _header(part, protocol.MAGIC, "a part of the hvd_ps wire", bits, block, n)


def rejoin_request(group: int, nonce: int, bits: int, block: int, n: int) -> Array:
    """The 16 bytes of a rejoin request (:class:`hvd_ps.ps.protocol.WireRejoin`) of ``group``
    for a shard of ``n`` elements: the part header with magic ``b"HJ"`` and ``nonce`` as its
    sequence."""
    raw = _HEADER.pack(protocol.REJOIN_MAGIC, 1, bits, group, block, nonce, n)
    return np.frombuffer(raw, np.uint8).copy()


def read_rejoin(request: Array, bits: int, block: int, n: int) -> Header:
    """A rejoin request's fields (``sender``: the group; ``seq``: its nonce), checked like a
    part's header. Raises :class:`WireError`."""
    if request.size != protocol.HEADER_BYTES:
        raise WireError(
            f"a rejoin request of {request.size} bytes where {protocol.HEADER_BYTES} were expected"
        )
    return _header(request, protocol.REJOIN_MAGIC, "a rejoin request of hvd_ps", bits, block, n)


def _header(raw: Array, expect: bytes, what: str, bits: int, block: int, n: int) -> Header:
    magic, version, got_bits, sender, got_block, seq, got_n = _HEADER.unpack_from(
        raw[: protocol.HEADER_BYTES].tobytes()
    )
    if magic != expect or version != 1:
        raise WireError(f"not {what}, version 1 (magic {magic!r}, version {version})")
    for name, got, want in (("bits", got_bits, bits), ("block", got_block, block), ("n", got_n, n)):
        if got != want:
            raise WireError(f"header field {name} is {got}, the key expects {want}")
    return Header(got_bits, sender, got_block, seq, got_n)


def decode(part: Array, bits: int, block: int, n: int) -> Tuple[Header, Array]:
    """The header and the float32 values of a part (checked by :func:`read`)."""
    head = read(part, bits, block, n)
    nb = -(-n // block)
    recs = part[protocol.HEADER_BYTES :].reshape(nb, protocol.block_bytes(bits, block))
    scales = np.ascontiguousarray(recs[:, :4]).view(np.float32).ravel()
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise WireError("a block scale is negative, NaN or infinite")
    raw = np.ascontiguousarray(recs[:, 4:])
    if bits == 8:
        codes = raw.view(np.int8).astype(np.float32)
    else:
        lo = (raw & 0x0F).astype(np.int8)
        hi = (raw >> 4).astype(np.int8)
        both = np.empty((nb, block), np.int8)
        both[:, 0::2], both[:, 1::2] = lo, hi
        codes = np.where(both > 7, both - 16, both).astype(np.float32)
    q = protocol.levels(bits)
    if np.any(np.abs(codes) > q):
        raise WireError(f"a code beyond +-{q}")
    return head, (codes * scales[:, None]).ravel()[:n]


def empty_reply(n: int, bits: int, block: int) -> Array:
    """The servers' reply before any exchange: sequence 0, every value zero."""
    return encode(np.zeros(n, np.float32), bits, block, protocol.SERVERS, 0)[0]


def as_bytes(elements: Array) -> Array:
    """A key's float32 elements as the bytes of its part (nothing converted)."""
    return np.ascontiguousarray(elements).view(np.uint8).ravel()
