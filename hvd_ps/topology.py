"""Groups of ranks: the MPI tier.

The world is partitioned into groups (ids ``0 .. num_groups - 1`` inside the job; when several
jobs share one PS tier, the job's groups are ``group_offset + id`` among ``total_groups`` of
all jobs, see :mod:`hvd_ps.ps.placement`). Each group trains synchronously with Horovod allreduce
on its own ``ProcessSet``; the group's leader (its lowest global rank, group rank 0) is the
group's client of the PS tier. Leaders also share a process set of their own, used only for
set-up checks.

The partition is computed and validated (:func:`plan`) from the MPI world *before*
``hvd.init`` is called, so a bad layout raises :class:`~hvd_ps.errors.TopologyError` on every
rank and nothing blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import arguments, frameworks
from .errors import ConfigError, TopologyError


def plan(
    world_size: int,
    group_size: Optional[int] = None,
    groups: Optional[Sequence[Sequence[int]]] = None,
    hosts: Optional[Sequence[str]] = None,
) -> List[List[int]]:
    """The groups for a world of ``world_size`` ranks, each a sorted list of global ranks.

    Exactly one of the ways applies: explicit ``groups`` (a partition of ``range(world_size)``,
    uneven sizes allowed), ``group_size`` (consecutive ranks; must divide ``world_size``), or by
    default one group per host (``hosts[r]`` is rank r's host name).
    """
    if groups is not None and group_size is not None:
        raise TopologyError("pass either group_size or groups to hvd_ps.init, not both")
    if groups is not None:
        return _check_partition(world_size, groups)
    if group_size is not None:
        arguments.integer("group_size", group_size, low=1, error=TopologyError)
        if world_size % group_size:
            raise TopologyError(
                f"group_size={group_size} does not divide the world size {world_size}: pass a "
                "group_size that divides it, or groups=[[...], ...] for uneven groups"
            )
        return [list(range(s, s + group_size)) for s in range(0, world_size, group_size)]
    if hosts is None or len(hosts) != world_size:
        raise TopologyError("grouping by host needs one host name per rank")
    by_host: Dict[str, List[int]] = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    return sorted(by_host.values())


def _check_partition(world_size: int, groups: Sequence[Sequence[int]]) -> List[List[int]]:
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        raise TopologyError(f"groups must be a non-empty list of lists of ranks, got {groups!r}")
    seen: Dict[int, int] = {}
    out = []
    for gid, grp in enumerate(groups):
        if isinstance(grp, (str, bytes)) or not isinstance(grp, Sequence):
            raise TopologyError(f"groups[{gid}] must be a list of ranks, got {grp!r}")
        if len(grp) == 0:
            raise TopologyError(f"groups[{gid}] is empty: put every rank in exactly one group")
        for r in grp:
            if isinstance(r, bool) or not isinstance(r, int):
                raise TopologyError(f"groups[{gid}] holds {r!r}, which is not a rank")
            if not 0 <= r < world_size:
                raise TopologyError(
                    f"groups[{gid}] holds rank {r}, outside the world of {world_size} ranks"
                )
            if r in seen:
                raise TopologyError(
                    f"rank {r} is in groups[{seen[r]}] and groups[{gid}]: put every rank in "
                    "exactly one group"
                )
            seen[r] = gid
        out.append(sorted(grp))
    missing = sorted(set(range(world_size)) - set(seen))
    if missing:
        raise TopologyError(f"ranks {missing} are in no group (groups must cover every rank)")
    return sorted(out)


@dataclass
class Topology:
    """This rank's place in the groups. Built by :func:`hvd_ps.init`."""

    groups: List[List[int]]
    rank: int
    group_id: int
    group: Any  # horovod ProcessSet of this rank's group
    leaders: Any  # horovod ProcessSet of the leaders (only meaningful on leaders)
    hosts: List[str] = field(default_factory=list)  # host name of every rank
    #: global id of this job's group 0 when several jobs share one PS tier (else 0)
    group_offset: int = 0
    #: groups of every job on the PS tier (0: this job's groups are all there is)
    total: int = 0

    @property
    def one_host(self) -> bool:
        """True when every rank runs on the same host (as MPI names it)."""
        return len(set(self.hosts)) <= 1

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def total_groups(self) -> int:
        """Groups of every job meeting at the PS tier: what the strategies' ``G`` is."""
        return self.total or self.num_groups

    @property
    def global_group_id(self) -> int:
        """This rank's group among every job's groups (``group_offset + group_id``)."""
        return self.group_offset + self.group_id

    @property
    def members(self) -> List[int]:
        return self.groups[self.group_id]

    @property
    def group_rank(self) -> int:
        return self.members.index(self.rank)

    @property
    def group_size(self) -> int:
        return len(self.members)

    @property
    def leader(self) -> int:
        """Global rank of this group's leader."""
        return self.members[0]

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    @property
    def leader_ranks(self) -> List[int]:
        return [g[0] for g in self.groups]


def world() -> Tuple[Any, ...]:
    """(rank, size, host names of every rank) of the MPI world, before Horovod starts."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.Get_rank(), comm.Get_size(), comm.allgather(MPI.Get_processor_name())


def setup(
    group_size: Optional[int] = None, groups: Optional[Sequence[Sequence[int]]] = None
) -> Topology:
    """Plan the groups, then ``hvd.init`` with their process sets. Returns a :class:`Topology`."""
    hvd = frameworks.horovod()

    rank, size, hosts = world()
    layout = plan(size, group_size=group_size, groups=groups, hosts=hosts)
    # Horovod keeps the global set itself; a set equal to it must not be registered again.
    everyone = list(range(size))
    leader_ranks = [g[0] for g in layout]
    sets = {}
    for members in layout + [leader_ranks]:
        key = tuple(members)
        if list(key) != everyone and key not in sets:
            sets[key] = hvd.ProcessSet(list(key))
    if not hvd.is_initialized():
        hvd.init(process_sets=list(sets.values()))
    elif sets:  # the script called hvd.init() itself, before hvd_ps.init()
        _add_process_sets(hvd, sets)
    if hvd.rank() != rank or hvd.size() != size:
        raise TopologyError("Horovod and MPI disagree on the world (rank/size)")

    def as_set(members: List[int]) -> Any:
        return hvd.global_process_set if members == everyone else sets[tuple(members)]

    gid = next(i for i, g in enumerate(layout) if rank in g)
    return Topology(layout, rank, gid, as_set(layout[gid]), as_set(leader_ranks), list(hosts))


def _add_process_sets(hvd: Any, sets: Dict[Tuple[int, ...], Any]) -> None:
    """Register the groups' process sets with a Horovod the script already started."""
    for key, process_set in sets.items():
        try:
            sets[key] = hvd.add_process_set(process_set)
        except ValueError:
            err = ConfigError(
                "hvd.init() was called before hvd_ps.init(): delete that hvd.init() line "
                "(hvd_ps.init() starts Horovod itself, with one process set per group), or "
                "call hvd.init(process_sets='dynamic') there instead"
            )
            err.every_rank = True  # every rank's script made the same call: one line per job
            raise err from None
