"""The compressed wire: its format, the numpy codec, the fused op's kernels (the same bytes),
and the servers' rules for compressed shards (rounds, shadows, untrusted parts)."""

from __future__ import annotations

import struct

import mxnet as mx
import numpy as np
import pytest

from hvd_ps.errors import ConfigError, HvdPsError
from hvd_ps.ps import codec, protocol, rules
from hvd_ps.train.core.fusion import WireCodec, check_engine_errors

BITS = (8, 4)


def reference_quantize(v, bits, block):
    """The quantizer as protocol.py states it, element by element (slow, obvious)."""
    q = np.float32((1 << (bits - 1)) - 1)
    codes, scales = [], []
    for lo in range(0, len(v), block):
        b = v[lo : lo + block].astype(np.float32)
        m = np.float32(np.max(np.abs(b)))
        if m < np.float32(2.0**-126):
            codes += [0] * len(b)
            scales.append(np.float32(0))
            continue
        inv = np.float32(q / m)
        codes += [int(np.clip(np.rint(np.float32(x * inv)), -q, q)) for x in b]
        scales.append(np.float32(m / q))
    return np.array(codes), np.array(scales, np.float32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [1, 127, 128, 300, 1000])
def test_the_codec_is_the_documented_quantizer(bits, n):
    rng = np.random.RandomState(n + bits)
    v = (rng.normal(size=n) * rng.choice([1e-3, 1.0, 50.0], size=n)).astype(np.float32)
    v[::7] = 0.0
    part, decoded = codec.encode(v, bits, 128, sender=2, seq=5)
    codes, scales = reference_quantize(v, bits, 128)
    assert part.size == protocol.part_bytes(n, bits, 128)
    magic, version, b, sender, block, seq, count = struct.unpack("<2sBBHHII", part[:16].tobytes())
    assert (magic, version, b, sender, block, seq, count) == (b"HQ", 1, bits, 2, 128, 5, n)
    expect = (codes.reshape(-1)[:n] * np.repeat(scales, 128)[:n]).astype(np.float32)
    np.testing.assert_array_equal(decoded, expect)
    head, back = codec.decode(part, bits, 128, n)
    np.testing.assert_array_equal(back, decoded)
    assert head.seq == 5 and head.sender == 2
    # round to nearest: no value is off by more than half a step of its block
    step = np.repeat(scales, 128)[:n]
    assert np.all(np.abs(v - decoded) <= 0.5 * step * (1 + 1e-6))


def test_int4_packs_two_codes_per_byte_low_nibble_first():
    v = np.array([1.0, -1.0, 7.0, -7.0], np.float32)  # scale 1: codes 1, -1, 7, -7
    part, _ = codec.encode(v, 4, 4, sender=0, seq=1)
    body = part[16:]
    assert struct.unpack("<f", body[:4].tobytes())[0] == 1.0
    assert list(body[4:]) == [0x01 | (0x0F << 4), 0x07 | (0x09 << 4)]


def test_wire_bytes_per_parameter():
    n = 128 * 1000
    assert protocol.part_bytes(n, 8, 128) / (4 * n) == pytest.approx(132 / 512, abs=1e-3)
    assert protocol.part_bytes(n, 4, 128) / (4 * n) == pytest.approx(68 / 512, abs=1e-3)


def test_shards_stay_below_mxnets_bound_and_cover_the_bucket():
    for bits in BITS:
        limit = protocol.shard_limit(bits, 128, 1_000_000)
        assert limit % 128 == 0 and protocol.part_bytes(limit, bits, 128) < 1_000_000
        for n, servers in [(1, 3), (1000, 2), (5_000_001, 4), (300, 8)]:
            cut = protocol.shards(n, 128, limit, servers)
            assert cut[0][0] == 0 and cut[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(cut, cut[1:]))
            assert all(0 < hi - lo <= limit for lo, hi in cut)
            assert all((hi - lo) % 128 == 0 for lo, hi in cut[:-1])
            assert len(cut) >= min(servers, -(-n // 128))


@pytest.mark.parametrize("bits", BITS)
def test_the_fused_op_writes_the_codecs_bytes_and_residual(bits):
    rng = np.random.RandomState(bits)
    bounds = [0, 150_016, 300_000]
    src = (rng.normal(size=300_000) * 3).astype(np.float32)
    res = (rng.normal(size=300_000) * 0.01).astype(np.float32)
    op = WireCodec(bounds, bits, 128, threads=2)
    wire, residual = mx.nd.zeros((op.nbytes // 4,), dtype="float32"), mx.nd.array(res)
    op.encode(mx.nd.array(src), residual, wire, sender=1, seq=3)
    got = codec.as_bytes(wire.asnumpy())  # the parts travel as float32 elements
    check_engine_errors()
    parts, left = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        v = src[lo:hi] + res[lo:hi]
        part, dec = codec.encode(v, bits, 128, 1, 3)
        parts.append(part)
        left.append(v - dec)
    np.testing.assert_array_equal(got, np.concatenate(parts))
    np.testing.assert_array_equal(residual.asnumpy(), np.concatenate(left))


@pytest.mark.parametrize("bits", BITS)
def test_the_fused_op_adds_a_reply_and_refuses_a_stale_one(bits):
    rng = np.random.RandomState(10 + bits)
    bounds = [0, 640, 1000]
    change = rng.normal(size=1000).astype(np.float32)
    parts = [
        codec.encode(change[lo:hi], bits, 128, protocol.SERVERS, 4)
        for lo, hi in zip(bounds, bounds[1:])
    ]
    reply = _f32(np.concatenate([p for p, _ in parts]))
    start = rng.normal(size=1000).astype(np.float32)
    shadow = mx.nd.array(start)
    op = WireCodec(bounds, bits, 128)
    op.decode_add(shadow, reply, seq=4)
    expect = start + np.concatenate([d for _, d in parts])
    np.testing.assert_array_equal(shadow.asnumpy(), expect)
    op.decode_add(shadow, reply, seq=5)  # read twice: refused, and nothing added
    shadow.wait_to_read()
    with pytest.raises(HvdPsError, match="answers exchange 4, expected 5"):
        check_engine_errors()
    np.testing.assert_array_equal(shadow.asnumpy(), expect)


def test_the_fused_op_checks_its_arguments():
    with pytest.raises(ConfigError, match="bits"):
        WireCodec([0, 10], 5, 128)
    op = WireCodec([0, 10], 8, 128)
    with pytest.raises(ConfigError, match="wire must be a dense 1-D float32 array"):
        op.encode(mx.nd.zeros((10,)), mx.nd.zeros((10,)), mx.nd.zeros((3,)), 0, 1)
    with pytest.raises(ConfigError, match="multiple of 8"):
        WireCodec([0, 10], 4, 12)


# -- the servers' rules -----------------------------------------------------------------------


class Server:
    """One server's rules of one compressed shard: a state key 0 and wire keys 1.. (as the
    server's Updaters would hold them), with the stored arrays MXNet would pass."""

    def __init__(self, inner, mode, groups, n=300, bits=8, block=128, x0=None):
        self.record = protocol.WireState(inner, bits, block, groups, mode, n)
        self.rules = {}
        self.rules[0] = rules.make(self.record, 0, self.rules.get)
        wires = [-1] if mode == "sync" else list(range(groups))
        for i, g in enumerate(wires, start=1):
            self.rules[i] = rules.make(protocol.WireKey(0, g), i, self.rules.get)
        self.x0 = np.zeros(n, np.float32) if x0 is None else x0
        self.stored = {0: mx.nd.array(self.x0)}
        for i in range(1, len(wires) + 1):
            self.stored[i] = _f32(codec.empty_reply(n, bits, block))
        self.rules[0].update(mx.nd.zeros((n,)), self.stored[0])  # adopt the initial value
        if mode == "async":  # the shard's rejoin key
            self.rejoin_key = len(wires) + 1
            rule = protocol.WireRejoin(0, n)
            self.rules[self.rejoin_key] = rules.make(rule, self.rejoin_key, self.rules.get)
            self.stored[self.rejoin_key] = mx.nd.zeros((n + protocol.REJOIN_EXTRA,))

    def push(self, key, part):
        self.rules[key].update(_f32(part), self.stored[key])
        return codec.as_bytes(self.stored[key].asnumpy())


def test_a_sync_round_sums_in_group_order_and_replies_with_the_shadows_change():
    rng = np.random.RandomState(3)
    n, g = 300, 3
    x0 = rng.normal(size=n).astype(np.float32)
    srv = Server(protocol.Add(scale=1.0 / g), "sync", g, n=n, x0=x0)
    pushes = [rng.normal(size=n).astype(np.float32) for _ in range(g)]
    parts = [codec.encode(p, 8, 128, i, 1) for i, p in enumerate(pushes)]
    for i in (2, 0):
        before = srv.push(1, parts[i][0])
        head, _ = codec.decode(before, 8, 128, n)
        assert head.seq == 0  # the round is open: the reply is still the initial one
    reply = srv.push(1, parts[1][0])
    total = parts[0][1] + parts[1][1] + parts[2][1]
    state = x0 + total * np.float32(1.0 / g)
    head, change = codec.decode(reply, 8, 128, n)
    assert head.seq == 1 and head.sender == protocol.SERVERS
    np.testing.assert_allclose(srv.rules[0].state.asnumpy(), state, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        change, codec.encode(srv.rules[0].state.asnumpy() - x0, 8, 128, protocol.SERVERS, 1)[1]
    )
    np.testing.assert_array_equal(srv.rules[0].shadow[-1].asnumpy(), x0 + change)


def test_async_pushes_reply_against_each_groups_own_shadow():
    rng = np.random.RandomState(4)
    n = 200
    srv = Server(protocol.Add(), "async", 2, n=n, bits=4)
    a = codec.encode(rng.normal(size=n).astype(np.float32), 4, 128, 0, 1)
    b = codec.encode(rng.normal(size=n).astype(np.float32), 4, 128, 1, 1)
    reply_a = srv.push(1, a[0])
    reply_b = srv.push(2, b[0])
    _, da = codec.decode(reply_a, 4, 128, n)
    _, db = codec.decode(reply_b, 4, 128, n)
    np.testing.assert_array_equal(da, codec.encode(a[1], 4, 128, 0, 1)[1])
    np.testing.assert_array_equal(db, codec.encode(a[1] + b[1], 4, 128, 0, 1)[1])
    np.testing.assert_array_equal(srv.rules[0].shadow[0].asnumpy(), da)
    np.testing.assert_array_equal(srv.rules[0].shadow[1].asnumpy(), db)


def _rejoin_push(srv, group, nonce, n, bits=8, block=128):
    request = codec.rejoin_request(group, nonce, bits, block, n)
    push = np.zeros(n + protocol.REJOIN_EXTRA, np.float32)
    push[n:] = request.view(np.float32)
    srv.rules[srv.rejoin_key].update(mx.nd.array(push), srv.stored[srv.rejoin_key])
    return request, srv.stored[srv.rejoin_key].asnumpy()


def test_a_rejoining_group_reads_the_state_and_the_servers_shadow_it_from_there():
    rng = np.random.RandomState(5)
    n, g = 260, 3
    srv = Server(protocol.Add(), "async", g, n=n, x0=rng.normal(size=n).astype(np.float32))
    for seq in (1, 2):  # every group pushes twice, then group 1's leader dies
        for i in range(g):
            srv.push(1 + i, codec.encode(rng.normal(size=n).astype(np.float32), 8, 128, i, seq)[0])
    state = srv.rules[0].state.asnumpy().copy()
    request, got = _rejoin_push(srv, 1, 0xC0FFEE, n)
    np.testing.assert_array_equal(got[:n], state)  # bit for bit: the copy the leader takes
    assert codec.as_bytes(got[n:]).tobytes() == request.tobytes()  # its own request, echoed
    np.testing.assert_array_equal(srv.rules[0].shadow[1].asnumpy(), state)
    np.testing.assert_array_equal(srv.rules[0].shadow[0].asnumpy() == state, False)
    # the new leader counts its exchanges from 1; the others go on with theirs
    srv.push(1, codec.encode(rng.normal(size=n).astype(np.float32), 8, 128, 0, 3)[0])
    send = rng.normal(size=n).astype(np.float32)
    part, sent = codec.encode(send, 8, 128, 1, 1)
    reply = srv.push(2, part)
    head, change = codec.decode(reply, 8, 128, n)
    assert head.seq == 1
    now = srv.rules[0].state.asnumpy()
    want = codec.encode(now - state, 8, 128, protocol.SERVERS, 1)[1]
    np.testing.assert_array_equal(change, want)  # the change since the copy it read
    np.testing.assert_array_equal(srv.rules[0].shadow[1].asnumpy(), state + change)
    with pytest.raises(ValueError, match="pushed exchange 1, expected 2"):
        srv.push(2, part)  # and its sequence holds again


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda n: codec.rejoin_request(3, 1, 8, 128, n), "sender 3 is not one of the 2 groups"),
        (lambda n: codec.rejoin_request(0, 1, 4, 128, n), "bits is 4, the key expects 8"),
        (lambda n: codec.rejoin_request(0, 1, 8, 128, n + 1), "n is 101, the key expects 100"),
        (lambda n: codec.encode(np.ones(n, np.float32), 8, 128, 0, 1)[0][:16], "magic b'HQ'"),
    ],
)
def test_the_servers_refuse_a_bad_rejoin_request(make, message):
    srv = Server(protocol.Add(), "async", 2, n=100)
    push = np.zeros(100 + protocol.REJOIN_EXTRA, np.float32)
    push[100:] = make(100).view(np.float32)
    with pytest.raises(ValueError, match=message):
        srv.rules[srv.rejoin_key].update(mx.nd.array(push), srv.stored[srv.rejoin_key])
    with pytest.raises(ValueError, match="a rejoin push of 100 elements where 104"):
        srv.rules[srv.rejoin_key].update(mx.nd.zeros((100,)), srv.stored[srv.rejoin_key])


def test_a_sync_shard_refuses_a_rejoin():
    srv = Server(protocol.Add(), "sync", 2, n=100)
    rule = rules.make(protocol.WireRejoin(0, 100), 9, srv.rules.get)
    push = np.zeros(104, np.float32)
    push[100:] = codec.rejoin_request(0, 1, 8, 128, 100).view(np.float32)
    with pytest.raises(ValueError, match="only async groups rejoin"):
        rule.update(mx.nd.array(push), mx.nd.zeros((104,)))


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda p: p[:-4], "bytes where"),
        (lambda p: np.concatenate([np.frombuffer(b"XX", np.uint8), p[2:]]), "not a part"),
        (lambda p: _header(p, 3, 4), "bits is 4, the key expects 8"),
        (lambda p: _header(p, 4, 7), "sender 7"),
        (lambda p: _header(p, 8, 2), "pushed exchange 2, expected 1"),
    ],
)
def test_the_servers_refuse_a_part_that_breaks_the_format(bad, message):
    srv = Server(protocol.Add(), "sync", 2, n=100)
    part, _ = codec.encode(np.ones(100, np.float32), 8, 128, 0, 1)
    with pytest.raises(ValueError, match=message):
        srv.push(1, bad(part))


def test_the_servers_refuse_a_second_push_in_one_round_and_a_foreign_group():
    srv = Server(protocol.Add(), "sync", 2, n=100)
    srv.push(1, codec.encode(np.ones(100, np.float32), 8, 128, 0, 1)[0])
    with pytest.raises(ValueError, match="pushed exchange 1, expected 2"):
        srv.push(1, codec.encode(np.ones(100, np.float32), 8, 128, 0, 1)[0])
    srv = Server(protocol.Add(), "async", 2, n=100)
    with pytest.raises(ValueError, match="group 1 pushed to the wire key of group 0"):
        srv.push(1, codec.encode(np.ones(100, np.float32), 8, 128, 1, 1)[0])


def _f32(part):
    """A part as the float32 elements of its key (as it travels)."""
    return mx.nd.array(part.view(np.float32), dtype="float32")


def _header(part, offset, value):
    out = part.copy()
    if offset == 3:
        out[3] = value
    elif offset == 4:
        out[4:6] = np.frombuffer(struct.pack("<H", value), np.uint8)
    else:
        out[8:12] = np.frombuffer(struct.pack("<I", value), np.uint8)
    return out


@pytest.mark.parametrize("bits", BITS)
def test_the_fused_encode_equals_pack_axpby_then_encode(bits):
    """The one-pass encode of ``alpha * x + beta * ref`` writes the bytes, residual and value
    that pack_axpby followed by encode write, whatever the arrays' boundaries."""
    from hvd_ps.train.core.fusion import FusedBuffer

    rng = np.random.RandomState(20 + bits)
    shapes = [(7, 33), (1,), (300,), (64, 64), (5,)]
    arrays = [mx.nd.array(rng.normal(size=s).astype(np.float32)) for s in shapes]
    buf = FusedBuffer(arrays, threads=2)
    n = buf.size
    bounds = [0, 128, 256 + 64, n]  # shards that cut through arrays and blocks
    op = WireCodec(bounds, bits, 64, threads=2)
    ref = mx.nd.array(rng.normal(size=n).astype(np.float32))
    res0 = (rng.normal(size=n) * 0.01).astype(np.float32)
    # two passes
    out_a, res_a = mx.nd.zeros((n,)), mx.nd.array(res0)
    wire_a = mx.nd.zeros((op.nbytes // 4,))
    buf.pack_axpby(ref, 0.3, -0.3, out=out_a)
    op.encode(out_a, res_a, wire_a, 1, 7)
    # one pass
    out_b, res_b = mx.nd.zeros((n,)), mx.nd.array(res0)
    wire_b = mx.nd.zeros((op.nbytes // 4,))
    op.encode_axpby(buf, ref, 0.3, -0.3, res_b, wire_b, 1, 7, out=out_b)
    check_engine_errors()
    np.testing.assert_array_equal(
        codec.as_bytes(wire_b.asnumpy()), codec.as_bytes(wire_a.asnumpy())
    )
    np.testing.assert_array_equal(res_b.asnumpy(), res_a.asnumpy())
    np.testing.assert_array_equal(out_b.asnumpy(), out_a.asnumpy())


def test_the_servers_codec_is_the_numpy_codec():
    from hvd_ps.ps import wire_host

    rng = np.random.RandomState(5)
    for bits in BITS:
        for n in (1, 127, 1000, 70_001):
            v = (rng.normal(size=n) * 4).astype(np.float32)
            part = wire_host.encode(v, bits, 128, protocol.SERVERS, 3)
            want, decoded = codec.encode(v, bits, 128, protocol.SERVERS, 3)
            np.testing.assert_array_equal(part, want)
            out = np.zeros(n, np.float32)
            wire_host.add_decoded(part, out, bits, 128, 3)
            np.testing.assert_array_equal(out, decoded)
            with pytest.raises(ConfigError, match="answers exchange 3, expected 4"):
                wire_host.add_decoded(part, out, bits, 128, 4)
            bad = part.copy()
            bad[16:20] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
            with pytest.raises(ConfigError, match="scale"):
                wire_host.add_decoded(bad, out, bits, 128)
            np.testing.assert_array_equal(out, decoded)  # a bad part changed nothing


@pytest.mark.parametrize("bits", BITS)
def test_the_servers_reply_in_one_pass_is_the_numpy_codec_of_the_change(bits):
    """encode_change: the part of ``state - shadow`` and ``shadow += decoded``, byte for byte and
    bit for bit the numpy codec's (what a leader then adds to its copy)."""
    from hvd_ps.ps import wire_host

    rng = np.random.RandomState(6)
    for n in (1, 129, 70_001):
        state = rng.normal(size=n).astype(np.float32)
        shadow = (state + rng.normal(size=n) * 0.1).astype(np.float32)
        want, decoded = codec.encode(state - shadow, bits, 128, protocol.SERVERS, 7)
        out = np.empty(protocol.part_bytes(n, bits, 128), np.uint8)
        moved = shadow.copy()
        wire_host.encode_change(state, moved, out, bits, 128, 7)
        np.testing.assert_array_equal(out, want)
        copy = shadow.copy()
        wire_host.add_decoded(out, copy, bits, 128, 7)  # the leader's side
        np.testing.assert_array_equal(moved, copy)
        np.testing.assert_array_equal(moved, shadow + decoded)
    with pytest.raises(ConfigError, match="shadow must be a contiguous float32 array"):
        wire_host.encode_change(state, shadow[:-1], out, bits, 128, 7)
    with pytest.raises(ConfigError, match="out must be the uint8 bytes of one part"):
        wire_host.encode_change(state, shadow, out[:-1], bits, 128, 7)


def _commit(srv, rounds, groups, window=protocol.ROUND_WINDOW, asker=None):
    """Push a rounds record (round: {group: seq}, rounds 1..) to a commit key of ``srv``, for
    group ``asker``'s reply (None: no reply)."""
    record = np.zeros(protocol.rounds_size(groups, window), np.float32)
    closed = max(rounds)
    record[:2] = (closed, max(1, closed - window + 1))
    record[protocol.ROUND_HEAD - 1] = 0 if asker is None else asker + 1
    ring = record[protocol.ROUND_HEAD + 3 * groups :].reshape(window, groups)
    for r, members in rounds.items():
        for g, seq in members.items():
            ring[(r - 1) % window, g] = seq
    key = 99
    if key not in srv.rules:
        rule = protocol.WireCommit((0,), groups, window)
        srv.rules[key] = rules.make(rule, key, srv.rules.get)
        srv.stored[key] = mx.nd.zeros(record.shape)
    srv.push(key, record.view(np.uint8))


@pytest.mark.parametrize("scale", [1.0 / 3, 1.0])
def test_a_quorum_round_applies_its_members_at_the_commit_and_a_late_push_the_round_after(scale):
    """Quorum mode: pushes wait on the shard; a commit applies each round it names, in order:
    the members' decoded pushes summed in group order (the rule's scale as for a full round), then
    answers the group that pushed it: the change of the state since that group's own shadow,
    into its wire key, whether its push was applied yet or not; a late push joins the next
    round and is applied once."""
    rng = np.random.RandomState(5)
    n, g = 300, 3
    x0 = rng.normal(size=n).astype(np.float32)
    srv = Server(protocol.Add(scale=scale), "quorum", g, n=n, x0=x0)
    sends = {(i, s): rng.normal(size=n).astype(np.float32) for i in range(g) for s in (1, 2)}
    parts = {k: codec.encode(v, 8, 128, k[0], k[1]) for k, v in sends.items()}
    for i in (0, 1, 2):  # group 2 pushes too, but round 1 closes without it
        srv.push(1 + i, parts[(i, 1)][0])
    state = srv.rules[0].state.asnumpy().copy()
    np.testing.assert_array_equal(state, x0)  # nothing applied before a commit
    _commit(srv, {1: {0: 1, 1: 1}}, g, asker=0)
    total = parts[(0, 1)][1] + parts[(1, 1)][1]
    want = x0 + total * np.float32(scale) if scale != 1.0 else x0 + total
    np.testing.assert_allclose(srv.rules[0].state.asnumpy(), want, rtol=0, atol=1e-6)

    def reply(i, seq):
        head, change = codec.decode(codec.as_bytes(srv.stored[1 + i].asnumpy()), 8, 128, n)
        assert head.seq == seq
        return change

    change0 = reply(0, 1)
    np.testing.assert_array_equal(srv.rules[0].shadow[0].asnumpy(), x0 + change0)
    reply(1, 0)  # group 1 did not ask yet: its wire key holds no reply
    assert srv.stored[99].asnumpy()[0] == 1  # the rounds this server applied
    _commit(srv, {1: {0: 1, 1: 1}}, g, asker=1)  # the same rounds again: nothing applied
    np.testing.assert_allclose(srv.rules[0].state.asnumpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(reply(1, 1), change0)
    _commit(srv, {1: {0: 1, 1: 1}}, g, asker=2)  # late: the state after round 1, unapplied
    change2 = reply(2, 1)
    np.testing.assert_array_equal(change2, change0)
    srv.push(1, parts[(0, 2)][0])
    _commit(srv, {1: {0: 1, 1: 1}, 2: {0: 2, 2: 1}}, g, asker=0)  # group 2's push: round 2
    total2 = parts[(0, 2)][1] + parts[(2, 1)][1]
    want2 = want + total2 * np.float32(scale) if scale != 1.0 else want + total2
    np.testing.assert_allclose(srv.rules[0].state.asnumpy(), want2, rtol=0, atol=1e-5)
    shadow0 = srv.rules[0].shadow[0].asnumpy()
    np.testing.assert_array_equal(shadow0, x0 + change0 + reply(0, 2))
    with pytest.raises(ValueError, match="round 3 holds group 1's push 2, but shard 0 has none"):
        _commit(srv, {1: {0: 1, 1: 1}, 2: {0: 2, 2: 1}, 3: {1: 2}}, g)
    with pytest.raises(ValueError, match="a commit for group 5, not one of the 3"):
        _commit(srv, {1: {0: 1, 1: 1}}, g, asker=5)


def test_a_quorum_shard_refuses_a_second_push_before_its_round_closed_and_a_lost_round():
    srv = Server(protocol.Add(), "quorum", 2, n=100)
    srv.push(1, codec.encode(np.ones(100, np.float32), 8, 128, 0, 1)[0])
    with pytest.raises(ValueError, match="group 0 pushed twice before round 1 closed"):
        srv.push(1, codec.encode(np.ones(100, np.float32), 8, 128, 0, 2)[0])
    window = 2
    with pytest.raises(ValueError, match="the members of round 1 are lost"):
        _commit(srv, {2: {1: 1}, 3: {1: 2}}, 2, window=window)
