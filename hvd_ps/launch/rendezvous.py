"""How ``hvdps-run`` and the job's ``hvd_ps.init`` agree on the grouping and on the PS tier.

The PS tier must know its number of workers (``DMLC_NUM_WORKER`` = the number of groups)
when its scheduler and servers start. The grouping is said once, in either place:

* **to hvdps-run**: ``hvdps-run --group-size N`` exports ``HVD_PS_GROUP_SIZE=N`` (and
  ``HVD_PS_NUM_GROUPS`` = ``np / N``) and starts the tier for that many workers before the
  job; the script's ``hvd_ps.init()`` with no grouping of its own uses ``N`` (:func:`grouping`).
* **in the script**: ``hvd_ps.init(group_size=N)`` (or ``groups=``, or the default of one group
  per host) and no grouping flag. hvdps-run cannot know the count, so it starts the tier
  only when the job tells it: it listens on a TCP port of the scheduler's address and puts
  ``HVD_PS_LAUNCHER=host:port`` and ``HVD_PS_SECRET_FILE`` (the tier's secret) in the job's
  environment. Global rank 0's ``hvd_ps.init`` proves that it holds the secret
  (:mod:`hvd_ps.authentication`) and sends the number of groups (:func:`ask`); hvdps-run
  starts the scheduler and servers for exactly that many workers and answers with the
  scheduler's address, which rank 0 broadcasts to every rank (as in the embedded mode).
  :class:`Listener` is hvdps-run's side.

When hvdps-run was told a count (``--num-groups`` or ``--group-size``), a script whose own
grouping differs fails in ``hvd_ps.init`` on every rank, before any training (:func:`check`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from .. import authentication, config, secret, topology
from ..errors import ConfigError, TierError
from ..gate import Gate

#: seconds a peer of the listener has to prove it holds the tier's secret
REQUEST_TIME = 5.0
#: connections the listener holds at once
MAX_PEERS = 16


def grouping(
    cfg: config.Config, group_size: Optional[int], groups: Optional[Sequence[Sequence[int]]]
) -> Tuple[Optional[int], Optional[Sequence[Sequence[int]]]]:
    """The grouping ``hvd_ps.init`` uses: the script's, else ``hvdps-run --group-size``'s."""
    if group_size is None and groups is None and cfg.wiring.launch_group_size is not None:
        return cfg.wiring.launch_group_size, None
    return group_size, groups


def check(cfg: config.Config, topo: topology.Topology) -> None:
    """Raise on every rank if the script's grouping contradicts what hvdps-run was told."""
    size = cfg.wiring.launch_group_size
    if size is not None:
        expected = topology.plan(len(topo.hosts), group_size=size)
        if topo.groups != expected:
            raise ConfigError(
                f"hvd_ps.init makes the groups {topo.groups}, but hvdps-run --group-size {size} "
                f"(HVD_PS_GROUP_SIZE) makes {expected}: give the grouping once, either in the "
                "script or to hvdps-run"
            )
    count = cfg.wiring.launch_num_groups
    if count is not None and count != topo.num_groups:
        raise TierError(
            f"the PS tier hvdps-run started expects {count} leaders (--num-groups {count}), "
            f"this job's hvd_ps.init makes {topo.num_groups} groups: drop --num-groups (the "
            "script's grouping is then used) or make it match"
        )


def ask(cfg: config.Config, num_groups: int, world_size: int) -> Tuple[str, int, int]:
    """Rank 0: tell hvdps-run the job's number of groups; returns (uri, port, num_servers)."""
    assert cfg.wiring.launcher is not None and cfg.wiring.secret_file is not None
    host, port = cfg.wiring.launcher
    where = f"hvdps-run at {host}:{port} (HVD_PS_LAUNCHER)"
    key = secret.load(cfg.wiring.secret_file)
    timeout = cfg.settings.timeout
    try:
        with socket.create_connection((host, port), timeout=min(30.0, timeout)) as sock:
            channel = authentication.connect(sock, key, min(30.0, timeout))
            channel.send({"num_groups": num_groups, "world_size": world_size})
            reply = channel.receive(timeout)  # hvdps-run starts the tier meanwhile
    except (OSError, ValueError) as err:
        raise TierError(f"asking {where} to start the PS tier failed: {err}") from None
    if "error" in reply:
        raise TierError(f"{where} could not start the PS tier: {reply['error']}")
    try:
        return str(reply["uri"]), int(reply["port"]), int(reply["num_servers"])
    except (KeyError, TypeError, ValueError):
        raise TierError(f"{where} sent a malformed answer: {reply!r}") from None


@dataclass
class Request:
    """Rank 0's request, held open until :meth:`answer`."""

    conn: socket.socket
    session: authentication.Session
    num_groups: int
    world_size: int

    def answer(self, message: Dict[str, Any]) -> None:
        try:
            self.conn.sendall(self.session.seal(message))
        except OSError:
            pass  # rank 0 is gone: the job fails on its own
        finally:
            self.conn.close()


class Listener:
    """hvdps-run's side: waits for rank 0's request on ``host`` (a free port). A peer that
    does not prove it holds ``key`` (the tier's secret) within :data:`REQUEST_TIME`, or whose
    request is not one, is dropped and counted in :attr:`refused`; no peer can hold up the
    listener (:class:`hvd_ps.gate.Gate`)."""

    def __init__(self, host: str, key: bytes) -> None:
        self.gate = Gate(host, key, "hvdps-run's rendezvous", _quiet, MAX_PEERS, REQUEST_TIME)
        self.address = self.gate.address

    @property
    def refused(self) -> int:
        return self.gate.refused

    def poll(self, timeout: float) -> Optional[Request]:
        """A valid request if one arrives within ``timeout`` s; anything else is dropped."""
        for conn, msg in self.gate.poll(timeout):
            if msg is None:
                continue
            groups, world = msg.get("num_groups"), msg.get("world_size")
            if isinstance(groups, int) and isinstance(world, int) and 0 < groups <= world:
                return Request(conn, self.gate.detach(conn), groups, world)
            self.gate.close(conn)
            self.gate.refused += 1
        return None

    def close(self) -> None:
        self.gate.shutdown()


def _quiet(_line: str) -> None:
    """The rendezvous reports no refusal: it lives only until rank 0 asks."""
