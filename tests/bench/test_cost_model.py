"""The cost model's arithmetic (benchmarks/model.py), on cases small enough to do by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/
from benchmarks.model import (  # noqa: E402
    FRAME_OVERHEAD,
    REFERENCE_FWD_BWD_S,
    TRANSPORTS,
    Job,
    Net,
    Transport,
    calibrate,
    check,
    check_markdown,
    exchange,
    ps_phase,
    rate_bytes,
    scaling,
    step,
)

F = FRAME_OVERHEAD
NET = Net(hosts=2, ranks_per_host=2, bandwidth=1e8, latency=0.001)
JOB = Job(params=1_000_000, compute_s=0.5)  # 4 MB of float32
#: transports that reach the link rate and cost no processor time: the arithmetic by hand
IDEAL = {name: Transport(efficiency=1.0) for name in TRANSPORTS}
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


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


def test_horovod_halving_doubling_over_hosts():
    got = step("horovod", NET, JOB, transports=IDEAL)
    # 2 hosts: 2 (H-1)/H M = 4 MB each way per host (the steps inside a host stay there),
    # 2 log2(4) = 4 latencies
    assert got["sent"] == pytest.approx([4e6 * F, 4e6 * F])
    assert got["comm_s"] == pytest.approx(0.04 * F + 0.004)
    assert got["step_s"] == pytest.approx(0.5 + 0.04 * F + 0.004)
    four = step("horovod", Net(4, 1, 1e8, 0.0), JOB, transports=IDEAL)
    assert four["total_bytes"] == pytest.approx(4 * 6e6 * F)  # 1.5 M per host


def test_dist_sync_servers_on_every_host():
    got = step("dist_sync", NET, JOB, server_hosts=2, transports=IDEAL)
    # each host: its 2 workers push half of 4 MB to the other host, and serve the other
    # host's 2 workers half of theirs: 4 MB each way per phase, then the pull
    assert got["sent"] == pytest.approx([8e6 * F, 8e6 * F])
    assert got["comm_s"] == pytest.approx(2 * (0.04 * F + 0.001))


def test_dist_sync_pipelines_push_and_pull():
    # one server host: host a only downloads in the push and only uploads in the pull, host b
    # the other way round. Phase by phase that is two 8 MB phases; with its keys pipelined
    # the pull of one key runs while another is pushed, so each direction carries 8 MB once
    got = step("dist_sync", NET, JOB, server_hosts=1, transports=IDEAL)
    assert got["comm_s"] == pytest.approx(0.08 * F + 0.002)
    phased = exchange(NET, 2, 4e6, 1, IDEAL["stock_ps"], pipelined=False)
    assert phased["link_s"] == pytest.approx(2 * (0.08 * F + 0.001))
    assert got["sent"] == phased["sent"] == pytest.approx([8e6 * F, 8e6 * F])


def test_dist_sync_base_is_forward_backward():
    # no Horovod group and the servers update: the bound's group allreduce and local update
    # (here 0.5 - 0.2 s) are not part of its step
    job = Job(params=1_000_000, compute_s=0.5, fwd_bwd_s=0.2)
    got = step("dist_sync", NET, job, server_hosts=2, transports=IDEAL)
    assert got["step_s"] == pytest.approx(0.2 + 2 * (0.04 * F + 0.001))
    hvd = step("horovod", NET, job, transports=IDEAL)
    assert hvd["step_s"] == pytest.approx(0.5 + 0.04 * F + 0.004)


def test_gradient_push_servers_on_host_a():
    got = step("gradient_push", NET, JOB, server_hosts=1, transports=IDEAL)
    assert got["sent"] == pytest.approx([4e6 * F, 4e6 * F])  # b pushes, a answers the pull
    assert got["step_s"] == pytest.approx(0.5 + 2 * (0.04 * F + 0.001))
    half = step(
        "gradient_push", NET, Job(1_000_000, 0.5, wire_bytes=2), server_hosts=1, transports=IDEAL
    )
    assert half["total_bytes"] == pytest.approx(4e6 * F)  # float16 on the wire


def test_periodic_blocking_and_overlapped():
    exchange_s = 2 * (0.04 * F + 0.001)
    blocking = step("easgd", NET, JOB, period=16, overlap=0, transports=IDEAL)
    assert blocking["comm_s"] == pytest.approx(exchange_s / 16)
    assert blocking["total_bytes"] == pytest.approx(8e6 * F / 16)
    hidden = step("easgd", NET, JOB, period=16, overlap=1, transports=IDEAL)  # 0.5 s hides it
    assert hidden["step_s"] == 0.5
    slow = Net(2, 2, 1e6, 0.0)  # 4 MB at 1 MB/s: 2 * 4.18 s per exchange, 8 steps hide 4 s
    partly = step("model_average", slow, JOB, period=16, overlap=8, transports=IDEAL)
    assert partly["comm_s"] == pytest.approx((8 * F - 4.0) / 16)
    half = step("diloco", NET, Job(1_000_000, 0.5, wire_bytes=2), period=16, transports=IDEAL)
    assert half["comm_s"] == pytest.approx(2 * (0.02 * F + 0.001) / 16)


def test_bound_and_single_host_send_nothing():
    nothing = {"step_s": 0.5, "comm_s": 0.0, "sent": [0, 0], "total_bytes": 0}
    assert step("bound", NET, JOB, transports=IDEAL) == nothing
    assert step("horovod", Net(1, 4, 1e8, 0.001), JOB, transports=IDEAL)["comm_s"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        step("allgather", NET, JOB, transports=IDEAL)
    with pytest.raises(ValueError, match="overlap"):
        step("easgd", NET, JOB, period=4, overlap=4, transports=IDEAL)


def _run(name, method, step_s, link_bytes, **kw):
    run = dict(name=name, method=method, hosts=2, ranks_per_host=2, link="800mbit",
               params=1_000_000, step_s=step_s, link_bytes_per_step=link_bytes)  # fmt: skip
    run.update(kw)
    return run


def test_check_against_measurements():
    runs = [
        _run("bound", "bound", 0.5, 3000.0),  # Horovod's control messages: no error quoted
        _run("horovod", "horovod", 0.6, 8e6),  # model: 0.5 + 0.04 F, 8 MB F
        _run("easgd k=16", "easgd", 0.5, 1e6, period=16, overlap=8),
        _run("other link", "horovod", 1.0, 1.0, link="1gbit"),  # no bound there: skipped
    ]
    rows = check(runs, IDEAL)
    assert [r["name"] for r in rows] == ["bound", "horovod", "easgd k=16"]
    assert rows[0]["calibration"] and rows[0]["step_error"] == 0.0
    assert rows[0]["bytes_error"] is None
    assert rows[1]["model_step_s"] == pytest.approx(0.5 + 0.04 * F)
    assert rows[1]["step_error"] == pytest.approx((0.04 * F - 0.1) / 0.6)
    assert rows[1]["bytes_error"] == pytest.approx(F - 1)
    assert rows[2]["step_error"] == 0.0  # 8 steps of 0.5 s hide an 0.08 s exchange
    assert rows[2]["bytes_error"] == pytest.approx(0.5 * F - 1)  # 8 MB F / 16 against 1 MB
    md = check_markdown(rows)
    assert "| horovod | 2x2 | 800mbit | 0.600 | 0.540 | -10% | 8.0 | 8.0 | +0% |" in md
    assert "Largest step-time error: 10% over 2 runs." in md


def test_scaling_curves():
    job = Job(params=1_000_000, compute_s=0.5)
    curves = scaling([8, 16], 4, 1e8, job, batch=32, period=16, overlap=8, latency=0.0,
                     transports=IDEAL)  # fmt: skip
    assert curves["bound"] == pytest.approx([8 * 32 / 0.5, 16 * 32 / 0.5])
    ring8 = 2 * 1 / 2 * 4e6 * F / 1e8  # 8 ranks on 2 hosts
    assert curves["Horovod"][0] == pytest.approx(8 * 32 / (0.5 + ring8))
    # dist_sync at 2 hosts, a server on each: 4 workers x 2 MB each way per phase
    assert curves["dist_sync"][0] == pytest.approx(8 * 32 / (0.5 + 2 * 8e6 * F / 1e8))
    assert curves["hvd_ps ModelAverage k=16 overlap=8"] == curves["bound"]


def test_efficiency_by_rate():
    t = Transport(0.9, by_rate=((1e7, 0.5), (1e9, 0.9)))
    assert t.efficiency_at(1e7) == 0.5 and t.efficiency_at(1e9) == 0.9
    assert t.efficiency_at(1e8) == pytest.approx(0.7)  # halfway in log rate
    assert t.efficiency_at(1e5) == 0.5 and t.efficiency_at(1e11) == 0.9  # the nearest
    assert Transport(0.6).efficiency_at(1.0) == 0.6
    slow = {**IDEAL, "hvd_ps": Transport(1.0, by_rate=((1e6, 0.25), (1e9, 1.0)))}
    got = step("gradient_push", Net(2, 2, 1e6, 0.0), JOB, server_hosts=1, transports=slow)
    assert got["comm_s"] == pytest.approx(2 * 4e6 * F / 2.5e5)


def test_mpi_flows_share_an_interface():
    half = {**IDEAL, "mpi": Transport(0.5)}
    one = step("horovod", Net(4, 1, 1e8, 0.0), JOB, transports=half)
    assert one["comm_s"] == pytest.approx(6e6 * F / 5e7)
    # two ranks per host: two flows, the interface idles a quarter of the time
    two = step("horovod", Net(2, 2, 1e8, 0.0), JOB, transports=half)
    assert two["comm_s"] == pytest.approx(4e6 * F / 7.5e7)


def test_periodic_processor_work_scales_with_machine_speed():
    work = {**IDEAL, "hvd_ps": Transport(1.0, exchange_s_per_param=1e-8)}
    got = step("model_average", NET, JOB, period=16, transports=work)
    # 0.01 s per leader for 1M parameters, two leaders sharing the cores, on top of the link
    assert got["comm_s"] == pytest.approx((0.02 + 2 * (0.04 * F + 0.001)) / 16)
    slower = Net(2, 2, 1e8, 0.001, cpu_scale=3.0)
    hidden = step("model_average", slower, JOB, period=16, overlap=8, transports=work)
    assert hidden["comm_s"] == pytest.approx(0.06 / 16)  # the link hidden, the work not
    own = Net(2, 2, 1e8, 0.001, shared_cpu=False)
    assert step("diloco", own, JOB, period=16, overlap=8, transports=work)["comm_s"] == (
        pytest.approx(0.01 / 16)
    )
    # gradient_push has no such pass: its servers' update replaces the local one
    gp = step("gradient_push", NET, JOB, server_hosts=2, transports=work)
    assert gp["comm_s"] == pytest.approx(2 * (0.02 * F + 0.001))  # half of 4 MB each way


def test_transport_efficiency_and_processor_time():
    slow = {**IDEAL, "hvd_ps": Transport(efficiency=0.5, cpu_s_per_byte=1e-9)}
    got = step("gradient_push", NET, JOB, server_hosts=1, transports=slow)
    # 4 MB F per phase at half of 1e8 B/s, two phases; 8 MB F sent by the two hosts together
    link = 2 * (4e6 * F / 5e7 + 0.001)
    assert got["comm_s"] == pytest.approx(link + 8e6 * F * 1e-9)
    own = Net(2, 2, 1e8, 0.001, shared_cpu=False)  # real hosts: the busiest host's bytes
    got = step("gradient_push", own, JOB, server_hosts=1, transports=slow)
    assert got["comm_s"] == pytest.approx(link + 4e6 * F * 1e-9)
    mpi = {**IDEAL, "mpi": Transport(efficiency=0.25, cpu_s_per_byte=2e-9)}
    got = step("horovod", Net(4, 1, 1e8, 0.0), JOB, transports=mpi)
    assert got["comm_s"] == pytest.approx(6e6 * F / 2.5e7 + 4 * 6e6 * F * 2e-9)


def test_overlap_hides_link_time_not_processor_time():
    cpu = {**IDEAL, "hvd_ps": Transport(efficiency=1.0, cpu_s_per_byte=1e-8)}
    got = step("easgd", NET, JOB, period=16, overlap=8, transports=cpu)
    assert got["comm_s"] == pytest.approx(8e6 * F * 1e-8 / 16)  # 0.08 s, all of it waited


def _synthetic(method, link, period, tr, rpn=2, **kw):
    """A run whose step time follows the model with the transports ``tr`` exactly (its bound
    on a machine as fast as the calibration file's)."""
    run = _run(method, method, 1.0, 0.0, link=link, period=period, ranks_per_host=rpn, **kw)
    bound = _run("bound", "bound", 0.5, 0.0, link=link, ranks_per_host=rpn,
                 compute_s=REFERENCE_FWD_BWD_S)  # fmt: skip
    run["step_s"] = check([run, bound], tr)[0]["model_step_s"]
    return [run, bound]


def test_calibrate_recovers_the_constants():
    known = {
        "mpi": Transport(0.55, by_rate=((1.25e7, 0.6), (1.25e8, 0.55))),
        "stock_ps": Transport(0.8, by_rate=((1.25e7, 0.5), (1.25e8, 0.8))),
        "hvd_ps": Transport(
            0.7, by_rate=((1.25e7, 0.75), (1.25e8, 0.7)), exchange_s_per_param=2e-8
        ),
    }
    runs = []
    for link in ("1gbit", "100mbit"):
        for rpn in (1, 2):  # Horovod: one flow per interface, then two
            runs += _synthetic("horovod", link, 1, known, rpn=rpn)
        runs += _synthetic("dist_sync", link, 1, known, server_hosts=2)
        runs += _synthetic("gradient_push", link, 1, known, server_hosts=2)
        runs += _synthetic("model_average", link, 16, known, server_hosts=2)
        # overlapped: at 100 Mbit/s part of the link time is waited for, at 1 Gbit/s none
        runs += _synthetic("easgd", link, 16, known, server_hosts=2, overlap=8)
    got = calibrate(runs)
    for name, t in known.items():
        assert [r for r, _ in got[name].by_rate] == [1.25e7, 1.25e8]
        assert [e for _, e in got[name].by_rate] == pytest.approx([e for _, e in t.by_rate])
        assert got[name].exchange_s_per_param == pytest.approx(t.exchange_s_per_param)
    assert calibrate(runs[:2]).keys() == {"mpi"}  # no other transport's run: nothing to fit


def test_constants_are_the_calibration_files_fit():
    runs = json.loads((RESULTS / "cluster_suite_4x1_run1.json").read_text())["runs"]
    fitted = calibrate(runs)
    for name, t in TRANSPORTS.items():
        assert [e for _, e in fitted[name].by_rate] == pytest.approx(
            [e for _, e in t.by_rate], abs=1e-3
        )
        assert fitted[name].exchange_s_per_param == pytest.approx(t.exchange_s_per_param, rel=1e-2)
    bounds = [r["compute_s"] for r in runs if r["method"] == "bound"]
    assert sum(bounds) / len(bounds) == pytest.approx(REFERENCE_FWD_BWD_S, abs=1e-4)


def test_held_out_file_within_measured_bound():
    # cluster_suite_full_run1.json (the full suite's run before the shared jobs: 2x2 and 4x1,
    # both links, every method; a file no suite run overwrites) is not in the fit; its
    # worst step-time error with the constants fitted to cluster_suite_4x1_run1.json was
    # 29% (EASGD overlapped at 4x1 100 Mbit/s; the old model's was 94%, dist_sync 2x2 1 Gbit/s)
    rows = check(json.loads((RESULTS / "cluster_suite_full_run1.json").read_text())["runs"])
    errors = [abs(r["step_error"]) for r in rows if not r["calibration"]]
    assert len(errors) == 36
    assert max(errors) < 0.30
    ds = next(r for r in rows if r["name"] == "dist_sync" and r["cluster"] == "2x2"
              and r["link"] == "1gbit")  # fmt: skip
    assert abs(ds["step_error"]) < 0.1
