"""Throughput of FusedBuffer against a memcpy reference and the naive MXNet way.

Three parameter lists, float32, shapes built by hand from the architectures: ResNet-50 v1
(161 arrays, 25.6M floats), BERT-base (199 arrays, 109.5M floats) and 1,000 small arrays of
1k-16k floats.

Byte counting: an operation "moves" the fused buffer once, so its throughput is
``nbytes / time`` with ``nbytes = size * 4`` (a pack reads and writes that many bytes each;
the memcpy reference ``numpy.copyto`` of ``nbytes`` is counted the same way). A sequence of
several buffer passes (pack+unpack, pack_axpby+unpack) counts ``passes * nbytes``.
All methods run in the same process, interleaved, each timed to completion (``wait_to_read`` /
``waitall``); the median of the repeats is reported.

``pack()`` without ``out`` takes its output from the buffer's small pool (reused once the
caller dropped it); "into a fresh array" allocates one per call, as ``pack()`` used to.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py [--quick] [--threads N]``.
Writes benchmarks/results/fusion.json and fusion.md (``--name`` changes the file names).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import mxnet as mx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hvd_ps.train.core.fusion import _LIB, FusedBuffer, WireCodec  # noqa: E402

Shape = Tuple[int, ...]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def resnet50_shapes() -> List[Shape]:
    """Trainable parameter shapes of ResNet-50 v1 (He et al. 2015): 161 arrays, 25,557,032
    floats (bias-free convolutions, BatchNorm gamma and beta, the 1000-way classifier)."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for blocks, mid, cout in [(3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)]:
        for b in range(blocks):
            shapes += [(mid, cin, 1, 1), (mid,), (mid,), (mid, mid, 3, 3), (mid,), (mid,)]
            shapes += [(cout, mid, 1, 1), (cout,), (cout,)]
            if b == 0:  # projection shortcut
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return shapes + [(1000, 2048), (1000,)]


def bert_base_shapes() -> List[Shape]:
    """BERT-base (uncased) parameter shapes: 199 arrays, ~109.5M floats."""
    h, ffn = 768, 3072
    shapes: List[Shape] = [(30522, h), (512, h), (2, h), (h,), (h,)]  # embeddings + LayerNorm
    for _ in range(12):
        shapes += [(h, h), (h,)] * 3  # Q, K, V
        shapes += [(h, h), (h,), (h,), (h,)]  # attention output, LayerNorm
        shapes += [(ffn, h), (ffn,), (h, ffn), (h,), (h,), (h,)]  # FFN, LayerNorm
    shapes += [(h, h), (h,)]  # pooler
    return shapes


def small_shapes(rng: np.random.Generator) -> List[Shape]:
    return [(int(n),) for n in rng.integers(1024, 16 * 1024 + 1, size=1000)]


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _wire(size: int, bits: int, threads: int) -> WireCodec:
    """The wire codec of a bucket of ``size`` floats, cut as hvd_ps cuts it for one server:
    reply headers with sequence 1 (so decode_add accepts what encode wrote)."""
    from hvd_ps.ps import protocol

    limit = protocol.shard_limit(bits, 128, 1_000_000)
    cut = protocol.shards(size, 128, limit, 1)
    return WireCodec([0] + [hi for _, hi in cut], bits, 128, threads)


def bench_list(name: str, shapes: List[Shape], repeats: int, threads: int) -> Dict:
    rng = np.random.default_rng(0)
    arrays = [mx.nd.array(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    buf = FusedBuffer(arrays, threads=threads)
    nbytes = buf.nbytes
    out = mx.nd.zeros((buf.size,))
    out16 = mx.nd.zeros((buf.size,), dtype="float16")
    ref = mx.nd.array(rng.standard_normal(buf.size).astype(np.float32))
    src = rng.standard_normal(buf.size).astype(np.float32)
    dst = np.zeros_like(src)
    offsets = buf.offsets
    mx.nd.waitall()

    def naive_pack() -> mx.nd.NDArray:
        return mx.nd.concat(*[a.reshape((-1,)) for a in arrays], dim=0)

    def naive_unpack(flat: mx.nd.NDArray) -> None:
        for i, a in enumerate(arrays):
            a[:] = flat[offsets[i] : offsets[i + 1]].reshape(a.shape)

    def naive_axpby_unpack() -> None:  # d = ref - x (packed), then x = d + x
        d = ref - naive_pack()
        for i, a in enumerate(arrays):
            a[:] = d[offsets[i] : offsets[i + 1]].reshape(a.shape) + a
        mx.nd.waitall()

    def pack_unpack_pooled() -> None:
        buf.unpack(buf.pack())
        mx.nd.waitall()

    # (method, buffer passes, fn); each fn returns only when its work is done
    methods: List[Tuple[str, int, Callable[[], None]]] = [
        ("memcpy (numpy.copyto)", 1, lambda: np.copyto(dst, src)),
        ("fused pack (into out)", 1, lambda: buf.pack(out=out).wait_to_read()),
        ("fused pack (no out: pooled)", 1, lambda: buf.pack().wait_to_read()),
        (
            "fused pack (into a fresh array)",
            1,
            lambda: buf.pack(out=mx.nd.empty((buf.size,))).wait_to_read(),
        ),
        ("fused pack -> float16", 1, lambda: buf.pack(out=out16).wait_to_read()),
        ("naive pack (mx.nd.concat)", 1, lambda: naive_pack().wait_to_read()),
        ("fused unpack", 1, lambda: (buf.unpack(out), mx.nd.waitall())),
        ("fused unpack <- float16", 1, lambda: (buf.unpack(out16), mx.nd.waitall())),
        ("naive unpack (slice assign)", 1, lambda: (naive_unpack(out), mx.nd.waitall())),
        (
            "fused pack+unpack",
            2,
            lambda: (buf.pack(out=out), buf.unpack(out), mx.nd.waitall()),
        ),
        ("fused pack+unpack (no out: pooled)", 2, lambda: pack_unpack_pooled()),
        ("naive pack+unpack", 2, lambda: (naive_unpack(naive_pack()), mx.nd.waitall())),
        (
            "fused pack_axpby+unpack(axpby)",
            2,
            lambda: (
                buf.pack_axpby(ref, -1.0, 1.0, out=out),
                buf.unpack(out, 1.0, 1.0),
                mx.nd.waitall(),
            ),
        ),
        ("naive axpby pack+unpack", 2, naive_axpby_unpack),
        ("fused elastic", 1, lambda: buf.elastic(ref, 0.1, out=out).wait_to_read()),
    ]
    # the compressed wire: encode (with the residual) and decode, on shards of one server's
    # size, and an exchange's whole leader-side work (DiLoCo's pseudo-gradient, then encode)
    for bits in (8, 4):
        wire = _wire(buf.size, bits, threads)
        sent = mx.nd.zeros((wire.nbytes // 4,))
        residual = mx.nd.zeros((buf.size,))
        methods += [
            (
                f"wire encode int{bits} (+ residual)",
                1,
                lambda w=wire, s=sent, r=residual: (
                    w.encode(out, r, s, 0xFFFF, 1),
                    s.wait_to_read(),
                ),
            ),
            (
                f"wire decode_add int{bits}",
                1,
                lambda w=wire, s=sent: (w.decode_add(out, s, 1), out.wait_to_read()),
            ),
            (
                f"DiLoCo push, int{bits}: one pass (encode_axpby)",
                1,
                lambda w=wire, s=sent, r=residual: (
                    w.encode_axpby(buf, ref, -1.0, 1.0, r, s, 0xFFFF, 1),
                    s.wait_to_read(),
                ),
            ),
            (
                f"DiLoCo push, int{bits}: pack_axpby + encode",
                1,
                lambda w=wire, s=sent, r=residual: (
                    buf.pack_axpby(ref, -1.0, 1.0, out=out),
                    w.encode(out, r, s, 0xFFFF, 1),
                    s.wait_to_read(),
                ),
            ),
        ]
    times: Dict[str, List[float]] = {m: [] for m, _, _ in methods}
    for _, _, fn in methods:  # warm-up: page in every buffer, start the pools
        fn()
    for _ in range(repeats):
        for m, _, fn in methods:  # interleaved
            times[m].append(timed(fn))
    rows = {}
    for m, passes, _ in methods:
        t = statistics.median(times[m])
        rows[m] = {"seconds": t, "gbps": passes * nbytes / t / 1e9, "passes": passes}
    mem = rows["memcpy (numpy.copyto)"]["gbps"]
    ratios = {
        "pack/memcpy": rows["fused pack (into out)"]["gbps"] / mem,
        "unpack/memcpy": rows["fused unpack"]["gbps"] / mem,
        "pack+unpack/memcpy": rows["fused pack+unpack"]["gbps"] / mem,
        "pack(no out)+unpack/memcpy": rows["fused pack+unpack (no out: pooled)"]["gbps"] / mem,
        "pack(fresh array)/memcpy": rows["fused pack (into a fresh array)"]["gbps"] / mem,
        "pack/naive": rows["fused pack (into out)"]["gbps"]
        / rows["naive pack (mx.nd.concat)"]["gbps"],
        "unpack/naive": rows["fused unpack"]["gbps"] / rows["naive unpack (slice assign)"]["gbps"],
        "pack+unpack/naive": rows["fused pack+unpack"]["gbps"] / rows["naive pack+unpack"]["gbps"],
        "axpby/naive": rows["fused pack_axpby+unpack(axpby)"]["gbps"]
        / rows["naive axpby pack+unpack"]["gbps"],
    }
    return {
        "list": name,
        "arrays": len(shapes),
        "elements": buf.size,
        "nbytes": nbytes,
        "threads": buf.threads,
        "repeats": repeats,
        "rows": rows,
        "ratios": ratios,
    }


def markdown(results: List[Dict], meta: Dict) -> str:
    lines = [
        "# FusedBuffer throughput",
        "",
        f"Machine: {meta['cpus']} CPUs, {meta['machine']}; OMP_NUM_THREADS={meta['omp']}; "
        f"F16C: {meta['f16c']}; mxnet {meta['mxnet']}.",
        "",
        "GB/s = fused-buffer bytes (size x 4) per buffer pass / time; pack+unpack and "
        "pack_axpby+unpack are 2 passes. Median of the repeats, methods interleaved.",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['list']}: {r['arrays']} arrays, {r['elements'] / 1e6:.2f}M floats "
            f"({r['nbytes'] / 1e6:.0f} MB), {r['threads']} threads, {r['repeats']} repeats",
            "",
            "| method | ms | GB/s |",
            "|---|---:|---:|",
        ]
        for m, row in r["rows"].items():
            lines.append(f"| {m} | {row['seconds'] * 1e3:.2f} | {row['gbps']:.2f} |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        for k, v in r["ratios"].items():
            lines.append(f"| {k} | {v:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    ap.add_argument("--threads", type=int, default=0, help="op threads (0: min(4, CPUs))")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=RESULTS, help="directory of the results")
    ap.add_argument("--name", default="fusion", help="results go to NAME.json and NAME.md")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 11)
    lists = [
        ("ResNet-50 v1", resnet50_shapes()),
        ("BERT-base", bert_base_shapes()),
        ("1000 small arrays", small_shapes(np.random.default_rng(1))),
    ]
    meta = {
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "omp": os.environ.get("OMP_NUM_THREADS", "unset"),
        "f16c": bool(_LIB.hvdps_fusion_has_f16c()),
        "mxnet": mx.__version__,
        "quick": args.quick,
        "byte_counting": "GB/s = passes * size * 4 / median seconds",
    }
    results = []
    for name, shapes in lists:
        r = bench_list(name, shapes, repeats, args.threads)
        results.append(r)
        print(f"{name}: {r['arrays']} arrays, {r['elements'] / 1e6:.2f}M floats")
        for m, row in r["rows"].items():
            print(f"  {m:34s} {row['seconds'] * 1e3:9.2f} ms {row['gbps']:7.2f} GB/s")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
