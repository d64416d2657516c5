"""The cost model's arithmetic (benchmarks/model.py), on cases small enough to do by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: benchmarks/
from benchmarks.model import (  # noqa: E402
    FRAME_OVERHEAD,
    Job,
    Net,
    check,
    check_markdown,
    ps_phase,
    rate_bytes,
    scaling,
    step,
)

F = FRAME_OVERHEAD
NET = Net(hosts=2, ranks_per_host=2, bandwidth=1e8, latency=0.001)
JOB = Job(params=1_000_000, compute_s=0.5)  # 4 MB of float32


def test_rates():
    assert rate_bytes("1gbit") == 1.25e8
    assert rate_bytes("100mbit") == 1.25e7
    assert rate_bytes("8bit") == 1.0
    with pytest.raises(ValueError, match="rate"):
        rate_bytes("fast")


def test_frame_overhead_is_measured_veth_gso():
    assert F == 1.001


def test_ps_phase_one_server_host():
    up, down = ps_phase(4, 1, 12.0, 1)
    assert up == [0.0, 12.0, 12.0, 12.0]  # the server's own host keeps its push local
    assert down == [36.0, 0.0, 0.0, 0.0]


def test_ps_phase_sharded():
    up, down = ps_phase(4, 1, 12.0, 2)
    assert up == [6.0, 6.0, 12.0, 12.0]
    assert down == [18.0, 18.0, 0.0, 0.0]
    up, down = ps_phase(2, 2, 8.0, 2)  # two workers per host, a server on each host
    assert up == [8.0, 8.0] and down == [8.0, 8.0]
    with pytest.raises(ValueError, match="server_hosts"):
        ps_phase(2, 1, 1.0, 3)


def test_horovod_ring():
    got = step("horovod", NET, JOB)
    # 2 (N-1)/N M = 1.5 * 4 MB on each host's edge of the ring, 2 (N-1) = 6 latencies
    assert got["sent"] == pytest.approx([6e6 * F, 6e6 * F])
    assert got["comm_s"] == pytest.approx(0.06 * F + 0.006)
    assert got["step_s"] == pytest.approx(0.5 + 0.06 * F + 0.006)
    four = step("horovod", Net(4, 1, 1e8, 0.0), JOB)
    assert four["total_bytes"] == pytest.approx(24e6 * F)


def test_dist_sync_servers_on_every_host():
    got = step("dist_sync", NET, JOB, server_hosts=2)
    # each host: its 2 workers push half of 4 MB to the other host, and serve the other
    # host's 2 workers half of theirs: 4 MB each way per phase, then the pull
    assert got["sent"] == pytest.approx([8e6 * F, 8e6 * F])
    assert got["comm_s"] == pytest.approx(2 * (0.04 * F + 0.001))


def test_gradient_push_servers_on_host_a():
    got = step("gradient_push", NET, JOB, server_hosts=1)
    assert got["sent"] == pytest.approx([4e6 * F, 4e6 * F])  # b pushes, a answers the pull
    assert got["step_s"] == pytest.approx(0.5 + 2 * (0.04 * F + 0.001))
    half = step("gradient_push", NET, Job(1_000_000, 0.5, wire_bytes=2), server_hosts=1)
    assert half["total_bytes"] == pytest.approx(4e6 * F)  # float16 on the wire


def test_periodic_blocking_and_overlapped():
    exchange_s = 2 * (0.04 * F + 0.001)
    blocking = step("easgd", NET, JOB, period=16, overlap=0)
    assert blocking["comm_s"] == pytest.approx(exchange_s / 16)
    assert blocking["total_bytes"] == pytest.approx(8e6 * F / 16)
    hidden = step("easgd", NET, JOB, period=16, overlap=1)  # 0.5 s of compute hides it
    assert hidden["step_s"] == 0.5
    slow = Net(2, 2, 1e6, 0.0)  # 4 MB at 1 MB/s: 2 * 4.18 s per exchange, 8 steps hide 4 s
    partly = step("model_average", slow, JOB, period=16, overlap=8)
    assert partly["comm_s"] == pytest.approx((8 * F - 4.0) / 16)
    half = step("diloco", NET, Job(1_000_000, 0.5, wire_bytes=2), period=16)
    assert half["comm_s"] == pytest.approx(2 * (0.02 * F + 0.001) / 16)


def test_bound_and_single_host_send_nothing():
    assert step("bound", NET, JOB) == {"step_s": 0.5, "comm_s": 0.0, "sent": [0, 0],
                                       "total_bytes": 0}  # fmt: skip
    assert step("horovod", Net(1, 4, 1e8, 0.001), JOB)["comm_s"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        step("allgather", NET, JOB)
    with pytest.raises(ValueError, match="overlap"):
        step("easgd", NET, JOB, period=4, overlap=4)


def _run(name, method, step_s, link_bytes, **kw):
    run = dict(name=name, method=method, hosts=2, ranks_per_host=2, link="800mbit",
               params=1_000_000, step_s=step_s, link_bytes_per_step=link_bytes)  # fmt: skip
    run.update(kw)
    return run


def test_check_against_measurements():
    runs = [
        _run("bound", "bound", 0.5, 3000.0),  # Horovod's control messages: no error quoted
        _run("horovod", "horovod", 0.6, 12e6),  # model: 0.5 + 0.06 F, 12 MB F
        _run("easgd k=16", "easgd", 0.5, 1e6, period=16, overlap=8),
        _run("other link", "horovod", 1.0, 1.0, link="1gbit"),  # no bound there: skipped
    ]
    rows = check(runs)
    assert [r["name"] for r in rows] == ["bound", "horovod", "easgd k=16"]
    assert rows[0]["calibration"] and rows[0]["step_error"] == 0.0
    assert rows[0]["bytes_error"] is None
    assert rows[1]["model_step_s"] == pytest.approx(0.5 + 0.06 * F)
    assert rows[1]["step_error"] == pytest.approx((0.06 * F - 0.1) / 0.6)
    assert rows[1]["bytes_error"] == pytest.approx(F - 1)
    assert rows[2]["step_error"] == 0.0  # 8 steps of 0.5 s hide an 0.08 s exchange
    assert rows[2]["bytes_error"] == pytest.approx(0.5 * F - 1)  # 8 MB F / 16 against 1 MB
    md = check_markdown(rows)
    assert "| horovod | 2x2 | 800mbit | 0.600 | 0.560 | -7% | 12.0 | 12.0 | +0% |" in md
    assert "Largest step-time error: 7% over 2 runs." in md


def test_scaling_curves():
    job = Job(params=1_000_000, compute_s=0.5)
    curves = scaling([8, 16], 4, 1e8, job, batch=32, period=16, overlap=8, latency=0.0)
    assert curves["bound"] == pytest.approx([8 * 32 / 0.5, 16 * 32 / 0.5])
    ring8 = 2 * 7 / 8 * 4e6 * F / 1e8
    assert curves["Horovod"][0] == pytest.approx(8 * 32 / (0.5 + ring8))
    # dist_sync at 2 hosts, a server on each: 4 workers x 2 MB each way per phase
    assert curves["dist_sync"][0] == pytest.approx(8 * 32 / (0.5 + 2 * 8e6 * F / 1e8))
    assert curves["hvd_ps ModelAverage k=16 overlap=8"] == curves["bound"]
