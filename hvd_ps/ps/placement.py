"""A job's place among the groups of a PS tier that several jobs share.

One ``hvdps-run --servers-only --num-workers G`` tier can serve several independent
``horovodrun`` jobs: G groups in all, each job bringing some of them. The strategies' math
needs the total ``G`` (EASGD's default ``alpha = 0.9 / G`` and its stability check, the
``1 / G`` of ModelAverage and of the sync rounds of GradientPush and DiLoCo), and data is
sharded by the global group id, so every job is told its place: the global id of its first
group (``group_offset``, ``HVD_PS_GROUP_OFFSET``) and the total (``total_groups``,
``HVD_PS_TOTAL_GROUPS``, by default the tier's ``DMLC_NUM_WORKER``). The job's groups are
then ``group_offset .. group_offset + num_groups - 1`` of ``0 .. total - 1``.

:func:`resolve` checks what the job says (the same on every rank, before anything blocks).
When the tier is shared, :func:`claim` makes the leaders of every job check on the tier
itself that each global id is taken exactly once and that all agree on the total, before any
training: every leader adds its claim to two keys of the servers that no trainer uses
(``add`` updater), the leaders meet at ps-lite barriers, and every leader reads the same sums,
so every job takes the same decision and none is left waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from .. import arguments, config, frameworks, private_api
from ..deadline import deadline
from ..errors import ConfigError, HvdPsError, TopologyError
from . import protocol

#: PS keys of the claims (trainers' keys count from 0; ``key * 9973`` must fit an int32,
#: MXNet's hash of a key to its server)
COUNT_KEY = 100000
IDS_KEY = 100001


@dataclass(frozen=True)
class Placement:
    """Where a job's groups sit among all groups of its PS tier."""

    offset: int  # global id of the job's group 0
    total: int  # groups of every job on the tier
    shared: bool  # other jobs' groups use the tier too: the leaders check their claims


def _everywhere(err: HvdPsError) -> HvdPsError:
    err.every_rank = True  # every rank of the job computes the same: one line per job
    return err


def _pick(name: str, arg: Any, env_name: str, env_value: Optional[int], low: int) -> Any:
    if arg is not None:
        try:
            arguments.integer(name, arg, low=low)
        except ConfigError as err:
            raise _everywhere(err) from None
        if env_value is not None and env_value != arg:
            raise _everywhere(
                ConfigError(
                    f"hvd_ps.init({name}={arg}) contradicts {env_name}={env_value}: give it once"
                )
            )
        return arg
    return env_value


def resolve(
    cfg: config.Config,
    num_groups: int,
    group_offset: Optional[int] = None,
    total_groups: Optional[int] = None,
) -> Placement:
    """The job's place from ``hvd_ps.init``'s arguments and the environment; raises a
    :class:`ConfigError` / :class:`TopologyError` (on every rank alike) when it cannot be."""
    offset = _pick("group_offset", group_offset, "HVD_PS_GROUP_OFFSET", cfg.wiring.group_offset, 0)
    total = _pick("total_groups", total_groups, "HVD_PS_TOTAL_GROUPS", cfg.wiring.total_groups, 1)
    tier_workers = cfg.wiring.ps_num_workers if cfg.wiring.external_tier else None
    if not cfg.wiring.external_tier and ((total or num_groups) != num_groups or offset):
        raise _everywhere(
            ConfigError(
                f"group_offset={offset or 0}, total_groups={total or num_groups}: this job "
                f"starts a PS tier of its own for its {num_groups} group(s); several jobs share "
                "a tier started with 'hvdps-run --servers-only' (each job then gets its "
                "DMLC_PS_ROOT_URI etc.)"
            )
        )
    if total is None:
        total = tier_workers or num_groups
    if offset is None:
        if total > num_groups:
            raise _everywhere(
                ConfigError(
                    f"the PS tier serves {total} groups in all (HVD_PS_TOTAL_GROUPS / "
                    f"DMLC_NUM_WORKER) and this job makes {num_groups}: several jobs share it, "
                    "so tell each job the global id of its first group, e.g. "
                    "HVD_PS_GROUP_OFFSET=0 for the first job and HVD_PS_GROUP_OFFSET="
                    f"{num_groups} for the next (or hvd_ps.init(group_offset=...))"
                )
            )
        offset = 0
    if offset + num_groups > total:
        raise _everywhere(
            TopologyError(
                f"this job's {num_groups} group(s) from group_offset={offset} (global ids "
                f"{offset}..{offset + num_groups - 1}) do not fit in total_groups={total} "
                f"(ids 0..{total - 1}): lower HVD_PS_GROUP_OFFSET or raise the total"
            )
        )
    shared = cfg.wiring.external_tier and max(total, tier_workers or total) > num_groups
    return Placement(offset, total, bool(shared))


# -- the leaders' check on the tier ------------------------------------------------------------


def _add_and_read(
    client: Any, key: int, value: np.ndarray[Any, Any], what: str
) -> np.ndarray[Any, Any]:
    """Every leader of the tier adds ``value`` to ``key``; returns the sum over all of them."""
    import mxnet as mx

    client.command(key, protocol.Add())
    kv, timeout = client.kv, client.cfg.settings.timeout
    with deadline(f"{what}: waiting for every leader of the {client.where}", timeout):
        kv.init(key, mx.nd.zeros(value.shape, dtype="float32"))  # a barrier of all leaders
        out = mx.nd.zeros(value.shape, dtype="float32")
        kv.pull(key, out=out)  # MXNet fills its key cache here, once (see Client.register)
        out.wait_to_read()
        kv.push(key, mx.nd.array(value, dtype="float32"))
        kv.pull(key, out=out)  # ordered after our push: it has been applied
        out.wait_to_read()
        private_api.kv_barrier(kv)  # every leader's push has been applied
        kv.pull(key, out=out)
        total: np.ndarray[Any, Any] = out.asnumpy()
        return total


def claim(client: Any, place: Placement, num_groups: int, group_id: int) -> Optional[str]:
    """Leader of the job's group ``group_id``: claim its global id on the tier.

    Returns None when every global id is taken exactly once and every leader agrees on the
    total, else why not (every leader of the tier decides alike, from the same sums).
    """
    gid = place.offset + group_id
    what = f"claiming global group id {gid}"
    leaders = int(round(_add_and_read(client, COUNT_KEY, np.ones(1), what)[0]))
    claim_ids = np.zeros(leaders + 1)
    if place.total == leaders:
        claim_ids[gid] = 1.0
    else:
        claim_ids[leaders] = 1.0  # one leader that counts another total
    got = _add_and_read(client, IDS_KEY, claim_ids, what)
    counts = np.rint(got).astype(int)
    mine = f"{place.offset}..{place.offset + num_groups - 1}"
    if counts[leaders]:
        if place.total != leaders:
            return (
                f"this job says there are {place.total} groups in all (HVD_PS_TOTAL_GROUPS / "
                f"total_groups), but {leaders} leaders joined the {client.where}: give every "
                f"job the tier's count (its --num-workers, {leaders})"
            )
        return (
            f"{counts[leaders]} leader(s) of other jobs on the {client.where} count another "
            f"total than its {leaders} groups (HVD_PS_TOTAL_GROUPS): give every job the "
            "same total"
        )
    taken: List[int] = [g for g in range(leaders) if counts[g] > 1]
    if taken:
        free = [g for g in range(leaders) if counts[g] == 0]
        return (
            f"global group id(s) {taken} are claimed by more than one leader of the "
            f"{client.where} (and {free} by none); this job's groups are {mine}: give each "
            "job its own HVD_PS_GROUP_OFFSET (the global id of its first group)"
        )
    return None


def check_claims(rt: Any, place: Placement) -> None:
    """Every rank: the leaders claim their ids; all ranks raise alike if a claim failed."""
    hvd = frameworks.horovod()

    topo = rt.topo
    message: Optional[str] = None
    if rt.client is not None:
        try:
            message = claim(rt.client, place, topo.num_groups, topo.group_id)
        except HvdPsError as err:
            message = f"group {topo.global_group_id}'s leader could not claim its id: {err}"
    if hvd.size() > 1:
        with deadline(
            "waiting for the leaders' group id claims on the PS tier", rt.cfg.settings.timeout
        ):
            found = hvd.allgather_object(message, name="hvd_ps.ps.placement")
        message = next((m for m in found if m is not None), None)
    if message is not None:
        raise _everywhere(TopologyError(message))
