"""hvd_ps.topology.plan: every way of grouping ranks, and every bad partition (pure, no MPI)."""

from __future__ import annotations

import pytest

from hvd_ps.errors import HvdPsError, TopologyError
from hvd_ps.topology import Topology, plan


@pytest.mark.parametrize(
    "world, groups, expected",
    [
        (1, [[0]], [[0]]),
        (2, [[0, 1]], [[0, 1]]),
        (4, [[0, 1], [2, 3]], [[0, 1], [2, 3]]),
        (4, [[0], [1, 2, 3]], [[0], [1, 2, 3]]),
        (4, [[0], [1], [2], [3]], [[0], [1], [2], [3]]),
        # members and groups come back sorted: rank 0 always leads group 0
        (4, [[3, 2], [1, 0]], [[0, 1], [2, 3]]),
        (5, [(4, 1), (3, 0, 2)], [[0, 2, 3], [1, 4]]),
        (4, ((0, 3), (1, 2)), [[0, 3], [1, 2]]),
    ],
)
def test_explicit_groups(world, groups, expected):
    assert plan(world, groups=groups) == expected


@pytest.mark.parametrize(
    "world, size, expected",
    [
        (1, 1, [[0]]),
        (4, 1, [[0], [1], [2], [3]]),
        (4, 2, [[0, 1], [2, 3]]),
        (4, 4, [[0, 1, 2, 3]]),
        (6, 3, [[0, 1, 2], [3, 4, 5]]),
    ],
)
def test_group_size(world, size, expected):
    assert plan(world, group_size=size) == expected


def test_by_host():
    assert plan(4, hosts=["a", "a", "b", "b"]) == [[0, 1], [2, 3]]
    assert plan(3, hosts=["b", "a", "b"]) == [[0, 2], [1]]
    assert plan(1, hosts=["x"]) == [[0]]


BAD_GROUPS = [
    # (world, groups, words the message must contain)
    (4, [[0, 1], [1, 2, 3]], "rank 1 is in groups[0] and groups[1]"),
    (4, [[0, 1, 1], [2, 3]], "rank 1 is in groups[0] and groups[0]"),
    (4, [[0, 1], [2]], "ranks [3] are in no group"),
    (4, [[1], [2, 3]], "ranks [0] are in no group"),
    (2, [[0, 1], []], "groups[1] is empty"),
    (4, [[0, 1], [2, 3, 4]], "groups[1] holds rank 4, outside the world of 4 ranks"),
    (4, [[-1, 0, 1, 2, 3]], "groups[0] holds rank -1, outside the world of 4 ranks"),
    (4, [[0, 1.0], [2, 3]], "groups[0] holds 1.0, which is not a rank"),
    (4, [[0, "1"], [2, 3]], "groups[0] holds '1', which is not a rank"),
    (4, [[0, True], [2, 3]], "groups[0] holds True, which is not a rank"),
    (4, [[0, None], [2, 3]], "groups[0] holds None, which is not a rank"),
    (4, [[0, 1], "23"], "groups[1] must be a list of ranks"),
    (4, [[0, 1], 2, 3], "groups[1] must be a list of ranks"),
    (4, [[0, 1], {2, 3}], "groups[1] must be a list of ranks"),
    (4, [], "groups must be a non-empty list"),
    (4, "0123", "groups must be a non-empty list"),
    (4, {0: [0, 1], 1: [2, 3]}, "groups must be a non-empty list"),
    (4, 4, "groups must be a non-empty list"),
]


@pytest.mark.parametrize("world, groups, message", BAD_GROUPS)
def test_bad_partition(world, groups, message):
    with pytest.raises(TopologyError) as info:
        plan(world, groups=groups)
    assert message in str(info.value)
    assert isinstance(info.value, HvdPsError)


@pytest.mark.parametrize(
    "world, size, message",
    [
        (4, 3, "group_size=3 does not divide the world size 4"),
        (2, 4, "group_size=4 does not divide the world size 2"),
        (4, 0, "group_size must be an integer >= 1, got 0"),
        (4, -2, "group_size must be an integer >= 1, got -2"),
        (4, 2.0, "group_size must be an integer >= 1, got 2.0"),
        (4, "2", "group_size must be an integer >= 1, got '2'"),
        (4, True, "group_size must be an integer >= 1, got True"),
    ],
)
def test_bad_group_size(world, size, message):
    with pytest.raises(TopologyError) as info:
        plan(world, group_size=size)
    assert message in str(info.value)


def test_both_ways_rejected():
    with pytest.raises(TopologyError, match="either group_size or groups"):
        plan(4, group_size=2, groups=[[0, 1], [2, 3]])


@pytest.mark.parametrize("hosts", [None, ["a", "b"], ["a"] * 5])
def test_by_host_needs_one_name_per_rank(hosts):
    with pytest.raises(TopologyError, match="one host name per rank"):
        plan(4, hosts=hosts)


@pytest.mark.parametrize(
    "layout, rank, gid, grank, gsize, leader, leaders",
    [
        ([[0]], 0, 0, 0, 1, True, [0]),
        ([[0, 1]], 1, 0, 1, 2, False, [0]),
        ([[0, 1], [2, 3]], 2, 1, 0, 2, True, [0, 2]),
        ([[0, 1], [2, 3]], 3, 1, 1, 2, False, [0, 2]),
        ([[0], [1, 2, 3]], 3, 1, 2, 3, False, [0, 1]),
        ([[0], [1], [2], [3]], 2, 2, 0, 1, True, [0, 1, 2, 3]),
    ],
)
def test_topology_properties(layout, rank, gid, grank, gsize, leader, leaders):
    topo = Topology(layout, rank, gid, group=None, leaders=None)
    assert topo.num_groups == len(layout)
    assert topo.members == layout[gid]
    assert topo.group_rank == grank
    assert topo.group_size == gsize
    assert topo.is_leader is leader
    assert topo.leader == layout[gid][0]
    assert topo.leader_ranks == leaders
