"""GradientPush: the paper's baseline, the servers run the optimizer on the pushed gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ....errors import ConfigError
from ....ps import protocol
from ..buckets import Bucket
from ..interfaces import Flat, PSClient
from .base import Exchange, Send, ServerOptimizer, Strategy, _mode, register, store


@dataclass(frozen=True)
class GradientPush(Strategy):
    """The paper's baseline: every step, each group's leader pushes the group-mean gradient and
    the servers run the optimizer on the PS copy ``w`` of the weights; groups then set
    ``x = w``. In sync mode a server applies one update with the mean of the G gradients of a
    round; in async mode each push updates ``w`` as it arrives as ``1/G`` of a sync round, so
    the sync hyperparameters carry over: ``sgd`` and ``nag`` run as delayed Nesterov (the
    gradient term at once with ``lr / G``, the momentum once every ``G`` pushes), other
    optimizers with ``lr / G`` per push.
    The trainer's optimizer and its ``optimizer_params`` (numbers only) run on the servers; no
    local update happens.

    With ``mode='async'``, ``max_staleness=s``: a group waits rather than run more than ``s``
    exchanges (here: steps) ahead of the slowest live one (docs/stragglers.md).

    Example::

        trainer = hvd_ps.DistributedTrainer(params, 'sgd', {'learning_rate': 0.1},
                                            sync=hvd_ps.GradientPush(mode='async'))
    """

    mode: str = "sync"
    max_staleness: Optional[int] = None
    quorum: Optional[int] = None
    grace: Optional[float] = None
    local_update: ClassVar[bool] = False
    server_optimizer: ClassVar[bool] = True

    def __post_init__(self) -> None:
        store(self, mode=_mode(self))
        self._check_staleness()
        self._check_quorum()

    def __repr__(self) -> str:
        bound = "" if self.max_staleness is None else f", max_staleness={self.max_staleness}"
        quorum = "" if self.quorum is None else f", quorum={self.quorum}"
        grace = "" if self.grace is None else f", grace={self.grace!r}"
        return f"GradientPush(mode={self.mode!r}{bound}{quorum}{grace})"


#: what async GradientPush's delayed Nesterov takes of an ``sgd``/``nag`` optimizer's arguments
#: (MXNet's defaults otherwise); ``lazy_update`` and ``multi_precision`` change nothing for the
#: dense float buffers the servers hold
DELAYED_SGD_ARGS = ("learning_rate", "momentum", "wd", "rescale_grad", "clip_gradient")
_NO_EFFECT = ("lazy_update", "multi_precision")


def async_push_rule(name: str, args: Dict[str, Any], groups: int) -> protocol.Rule:
    """The servers' rule of async GradientPush: each push is ``1/G`` of a sync round.

    MXNet's ``sgd`` and ``nag`` (one momentum buffer) become delayed Nesterov SGD, as async
    DiLoCo's outer step: the push's own gradient term at once with ``lr / G``, the momentum
    once every ``G`` pushes. Other optimizers run on every push with ``lr / G`` (their state
    updated per push)."""
    if name not in ("sgd", "nag"):
        return protocol.Optimizer(name, dict(args), lr_scale=1.0 / groups)
    unknown = sorted(set(args) - set(DELAYED_SGD_ARGS) - set(_NO_EFFECT))
    if unknown:
        raise ConfigError(
            f"optimizer_params {', '.join(unknown)}: async GradientPush runs {name!r} on the "
            f"servers as delayed Nesterov SGD, which takes {', '.join(DELAYED_SGD_ARGS)}"
        )
    clip = args.get("clip_gradient")
    return protocol.Nesterov(
        lr=float(args.get("learning_rate", 0.01)),  # MXNet's default for sgd and nag
        momentum=float(args.get("momentum", 0.0)),
        nesterov=True,
        scale=float(args.get("rescale_grad", 1.0)) / groups,
        delay=groups,
        wd=float(args.get("wd", 0.0)),
        clip=None if clip is None or clip < 0 else float(clip),
    )


class GradientPushExchange(Exchange):
    overlaps = False

    def __init__(
        self,
        s: GradientPush,
        groups: int,
        wire: Optional[str],
        optimizer: Optional[ServerOptimizer],
    ) -> None:
        super().__init__(s, groups, wire)
        if optimizer is None:
            raise ConfigError("GradientPush needs the trainer's optimizer (name, numbers)")
        name, args = optimizer
        if s.mode == "sync":  # one step with the mean of a round's G gradients
            self.rule = protocol.Optimizer(name, dict(args), protocol.round_scale(s.mode, groups))
        else:
            self.rule = async_push_rule(name, dict(args), groups)

    def exchange(self, b: Bucket, client: PSClient) -> None:
        # b.out already holds the scaled group-mean gradient (packed by the trainer)
        client.exchange(b.key, b.out, b.pulled, wait=False)
        b.params.unpack(b.pulled)

    def wire_send(self, b: Bucket, src: Flat, blocking: bool) -> Optional[Send]:
        return None  # b.out already holds the scaled group-mean gradient

    def wire_apply(self, b: Bucket, blocking: bool) -> None:
        b.params.unpack(b.pulled)  # x = w (the copy)


register(GradientPush, GradientPushExchange)
