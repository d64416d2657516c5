"""PS exchange time for the ResNet-50 parameter list: fused keys vs one key per array.

For each layout (1 or 2 servers; 2 or 4 groups of one rank each) one mpirun job starts an
embedded tier; every leader then times, interleaved round by round on the same tier:

* one key: FusedBuffer pack -> push + pull of ONE key -> unpack;
* buckets: the same with fused buffers of at most ``HVD_PS_BUCKET_MB`` (hvd_ps's default),
  every bucket's transfer queued before any is waited for, so they overlap;
* per-array: push + pull of the 161 arrays as 161 keys, as a plain ``dist_sync`` KVStore
  does for a Gluon model (MXNet shards arrays above its big-array bound across servers).

Both in sync mode with the server's ``assign`` rule (the round's sum), so every round is a real
round among all leaders. Usage: ``python benchmarks/bench_exchange.py [--rounds N] [--quick]``
(runs the jobs itself). Writes benchmarks/results/exchange.json and exchange.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def worker(rounds: int, scale: float) -> None:
    import horovod.mxnet as hvd
    import mxnet as mx

    import hvd_ps
    from hvd_ps.ps import protocol
    from hvd_ps.train import runtime

    sys.path.insert(0, str(HERE))
    from bench_fusion import resnet50_shapes

    from hvd_ps.train.core.buckets import plan_buckets

    hvd_ps.init(group_size=1)
    shapes = [
        tuple(max(1, int(d * scale)) if i == 0 else d for i, d in enumerate(s))
        for s in resnet50_shapes()
    ]
    arrays = [mx.nd.ones(s) for s in shapes]
    client = runtime.runtime().client
    assert client is not None
    client.set_mode("sync")
    buf = hvd_ps.FusedBuffer(arrays)
    flat, pulled = buf.pack(), mx.nd.zeros((buf.size,))
    fused_key = client.register("fused", flat, protocol.Assign())
    keys = [client.register(f"a{i}", a, protocol.Assign()) for i, a in enumerate(arrays)]
    outs = [mx.nd.zeros(s) for s in shapes]
    # hvd_ps's default: fused buffers of at most HVD_PS_BUCKET_MB, one key each, overlapped
    plan = plan_buckets(arrays, int(runtime.runtime().cfg.settings.bucket_mb * 2**20))
    bufs = [hvd_ps.FusedBuffer([arrays[i] for i in idx]) for idx in plan]
    bflats = [b.pack() for b in bufs]
    bpulled = [mx.nd.zeros((b.size,)) for b in bufs]
    bkeys = [client.register(f"b{i}", f, protocol.Assign()) for i, f in enumerate(bflats)]
    fused, bucketed, per_array = [], [], []
    for _ in range(rounds + 1):  # the first round of each is a warm-up
        t = time.perf_counter()
        buf.pack(out=flat)
        client.exchange(fused_key, flat, pulled)
        buf.unpack(pulled)
        mx.nd.waitall()
        fused.append(time.perf_counter() - t)
        t = time.perf_counter()
        for b, key, f, p in zip(bufs, bkeys, bflats, bpulled):
            b.pack(out=f)
            client.exchange(key, f, p, wait=False)
            b.unpack(p)
        mx.nd.waitall()
        bucketed.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.kv.push(keys, arrays)
        client.kv.pull(keys, out=outs)
        mx.nd.waitall()
        per_array.append(time.perf_counter() - t)
    res = {
        "fused": fused[1:],
        "bucketed": bucketed[1:],
        "per_array": per_array[1:],
        "floats": buf.size,
        "arrays": len(arrays),
        "buckets": len(bufs),
    }
    res_all = hvd.allgather_object(res, name="bench")
    if hvd.rank() == 0:
        print("RESULT " + json.dumps(res_all), flush=True)
    hvd_ps.shutdown()


def run_layout(groups: int, servers: int, rounds: int, scale: float) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HVD_PS_NUM_SERVERS=str(servers),
        HVD_PS_TIMEOUT="300",
        PYTHONPATH=str(HERE.parent),
    )
    cmd = [
        "timeout",
        "-k",
        "5",
        "900",
        "mpirun",
        "-np",
        str(groups),
        "--oversubscribe",
        "--bind-to",
        "none",
        sys.executable,
        __file__,
        "--worker",
        "--rounds",
        str(rounds),
        "--scale",
        str(scale),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if "RESULT " in ln]
    if proc.returncode or not line:
        sys.exit(f"job failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    per_rank = json.loads(line[0].split("RESULT ", 1)[1])

    # a round ends when the slowest leader has its result: take the max over leaders
    def slowest(name: str) -> float:
        return statistics.median(max(r[name][i] for r in per_rank) for i in range(rounds))

    f, b, p = slowest("fused"), slowest("bucketed"), slowest("per_array")
    return {
        "groups": groups,
        "servers": servers,
        "floats": per_rank[0]["floats"],
        "arrays": per_rank[0]["arrays"],
        "buckets": per_rank[0]["buckets"],
        "fused_s": f,
        "bucketed_s": b,
        "per_array_s": p,
        "per_array_over_bucketed": p / b,
    }


def markdown(rows: list, rounds: int) -> str:
    mb = rows[0]["floats"] * 4 / 1e6
    out = [
        "# PS exchange: fused keys vs one key per array (ResNet-50 list)",
        "",
        f"{rows[0]['arrays']} arrays, {rows[0]['floats'] / 1e6:.2f}M floats ({mb:.0f} MB) per "
        "leader, pushed and pulled each round; sync mode; loopback on a 2-core machine. "
        "*one key*: the whole list as one fused buffer; *buckets*: hvd_ps's default, fused "
        f"buffers of at most HVD_PS_BUCKET_MB ({rows[0]['buckets']} keys), their transfers "
        "overlapped; *per-array*: one key per array, as a plain `dist_sync` KVStore. Median "
        f"over {rounds} interleaved rounds of the slowest leader's time.",
        "",
        "| groups | servers | one key (s) | buckets (s) | per-array keys (s) "
        "| per-array / buckets |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['groups']} | {r['servers']} | {r['fused_s']:.3f} | {r['bucketed_s']:.3f} | "
            f"{r['per_array_s']:.3f} | {r['per_array_over_bucketed']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="scale the first dim of shapes")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1/8 of the sizes")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.scale = 2, 0.125
    if args.worker:
        worker(args.rounds, args.scale)
        return 0
    rows = []
    for groups in (2, 4):
        for servers in (1, 2):
            row = run_layout(groups, servers, args.rounds, args.scale)
            print(
                f"groups={groups} servers={servers}: one key {row['fused_s']:.3f} s, "
                f"buckets {row['bucketed_s']:.3f} s, per-array {row['per_array_s']:.3f} s",
                flush=True,
            )
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"exchange{suffix}.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / f"exchange{suffix}.md").write_text(markdown(rows, args.rounds))
    print(markdown(rows, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
