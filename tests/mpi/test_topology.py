"""Topology queries on every rank for the session's grouping, and bad layouts under MPI."""

from __future__ import annotations

import mxnet as mx
import pytest
from mpi4py import MPI

import hvd_ps
from hvd_ps.errors import TopologyError
from hvd_ps.train import runtime

pytestmark = pytest.mark.mpi(min_size=1)


def expected(shape, rank):
    layout = sorted(sorted(g) for g in shape)
    gid = next(i for i, g in enumerate(layout) if rank in g)
    return layout, gid, layout[gid]


def test_queries(rt, shape):
    import horovod.mxnet as hvd

    rank = hvd.rank()
    layout, gid, members = expected(shape, rank)
    assert hvd.size() == sum(len(g) for g in shape)
    assert hvd_ps.groups() == layout
    assert hvd_ps.num_groups() == len(layout)
    assert hvd_ps.group_id() == gid
    assert hvd_ps.group_size() == len(members)
    assert hvd_ps.group_rank() == members.index(rank)
    assert hvd_ps.is_leader() is (rank == members[0])
    # only leaders are PS clients, and the client knows its group
    assert (rt.client is not None) is (rank == members[0])
    if rt.client is not None:
        assert (rt.client.group_id, rt.client.num_groups) == (gid, len(layout))
    # rank 0 runs the embedded tier; nobody else does
    assert (rt.local is not None) is (rank == 0)
    # groups() hands out a copy
    hvd_ps.groups()[0].append(99)
    assert hvd_ps.groups() == layout


def test_queries_agree_across_ranks(rt, shape):
    """Every rank's view, gathered: the groups are the same everywhere and consistent."""
    views = MPI.COMM_WORLD.allgather(
        (hvd_ps.groups(), hvd_ps.group_id(), hvd_ps.group_rank(), hvd_ps.is_leader())
    )
    layout = views[0][0]
    for rank, (grps, gid, grank, leader) in enumerate(views):
        assert grps == layout
        assert layout[gid][grank] == rank
        assert leader is (grank == 0)
    assert sorted(r for g in layout for r in g) == list(range(len(views)))


def test_group_process_set(rt, shape):
    import horovod.mxnet as hvd

    rank = hvd.rank()
    _, gid, members = expected(shape, rank)
    ps = hvd_ps.group()
    assert ps.ranks == members
    assert ps.size() == len(members)
    assert ps.rank() == members.index(rank)
    # an allreduce on the group's set sums exactly the group's members
    x = mx.nd.array([float(rank), 1.0])
    total = hvd.allreduce(x, average=False, name="test.topology.group_sum", process_set=ps)
    assert total.asnumpy().tolist() == [float(sum(members)), float(len(members))]
    # the leaders' set (used for set-up checks) holds exactly the leaders
    if hvd_ps.is_leader():
        assert rt.topo.leaders.ranks == [g[0] for g in hvd_ps.groups()]


def test_broadcast_from_leader_reaches_group(rt, shape):
    import horovod.mxnet as hvd

    rank = hvd.rank()
    _, gid, members = expected(shape, rank)
    x = mx.nd.array([float(rank) * 10 + 1])
    out = hvd.broadcast(
        x, root_rank=members[0], name="test.topology.bcast", process_set=hvd_ps.group()
    )
    assert out.asnumpy()[0] == members[0] * 10 + 1


def bad_layouts(size):
    """(kwargs, message) for bad layouts of a world of ``size`` ranks."""
    everyone = list(range(size))
    cases = [
        (dict(groups=[everyone, [0]]), "rank 0 is in groups[0] and groups[1]"),
        (dict(groups=[everyone, []]), "groups[1] is empty"),
        (dict(groups=[everyone + [size]]), f"holds rank {size}, outside the world"),
        (dict(groups=[[float(r) for r in everyone]]), "which is not a rank"),
        (dict(group_size=size + 1), f"does not divide the world size {size}"),
        (dict(group_size=0), "group_size must be an integer >= 1"),
        (dict(groups=[everyone], group_size=size), "either group_size or groups"),
        (dict(groups=[]), "groups must be a non-empty list"),
    ]
    if size > 1:
        cases.append((dict(groups=[everyone[:-1]]), f"ranks [{size - 1}] are in no group"))
    return cases


@pytest.mark.parametrize("case", range(9))
def test_bad_layout_raises_on_every_rank(rt, monkeypatch, case):
    """hvd_ps.init with a bad layout raises TopologyError everywhere, before hvd.init."""
    size = MPI.COMM_WORLD.Get_size()
    cases = bad_layouts(size)
    if case >= len(cases):
        pytest.skip(f"no case {case} at world size {size}")
    kwargs, message = cases[case]
    calls = []
    monkeypatch.setattr(runtime, "_rt", None)  # as if init had not run in this process
    import horovod.mxnet as hvd

    monkeypatch.setattr(hvd, "init", lambda *a, **k: calls.append((a, k)))
    errors = []
    try:
        hvd_ps.init(**kwargs)
    except TopologyError as err:
        errors.append(str(err))
    everyone = MPI.COMM_WORLD.allgather(errors)  # nobody hangs: every rank gets here
    assert calls == []  # validated before Horovod was touched
    assert all(len(e) == 1 and message in e[0] for e in everyone), everyone
