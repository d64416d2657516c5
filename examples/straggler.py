"""An emulated straggler for the examples: ``--slow-group G --slowdown F``.

Every rank of group ``G`` (its global group id) sleeps after each training step for ``F - 1``
times the time that step's computation took (its forward and backward pass until the
gradients are ready, as measured on that rank), so the group computes about ``F`` times as
slowly as it would alone. The rest of a step (``trainer.step``: the group's allreduce, a PS
exchange) is not stretched: a slow exchange must not make the emulated computation slower.
This is an emulation of a slower cluster (other tenants, older hardware), not a model of one:
the sleep costs no CPU, so on a machine with fewer cores than ranks the slow group's sleeps
leave the others more CPU than a really slower cluster would.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Iterable, Optional


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--slow-group",
        type=int,
        default=None,
        help="emulate a straggler: this global group's ranks take --slowdown times as long per "
        "step (a sleep proportional to each measured step)",
    )
    p.add_argument(
        "--slowdown",
        type=float,
        default=2.0,
        help="how many times as long the --slow-group's steps take (default 2)",
    )


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.slowdown < 1.0:
        p.error(f"--slowdown must be >= 1 (times as long per step), got {args.slowdown:g}")
    if args.slow_group is not None and args.slow_group < 0:
        p.error(f"--slow-group must be a global group id >= 0, got {args.slow_group}")


def describe(slow_group: int, slowdown: float) -> str:
    return f"straggler (emulated): group {slow_group}'s ranks take {slowdown:g}x as long per step"


class Straggler:
    """Slows this rank down if its group is ``slow_group``: call :meth:`start` before a step's
    forward pass, :meth:`computed` once its gradients are ready, :meth:`finish` after
    ``trainer.step``."""

    def __init__(self, slow_group: Optional[int], slowdown: float, gid: int) -> None:
        self.factor = slowdown - 1.0 if slow_group is not None and gid == slow_group else 0.0
        self.began = 0.0
        self.compute = 0.0
        self.slept = 0.0

    def start(self) -> None:
        self.began = time.perf_counter()

    def computed(self, grads: Iterable[Any]) -> None:
        """The step's gradients (MXNet arrays) are ready: its computation time is known."""
        if self.factor > 0.0:
            for g in grads:
                g.wait_to_read()
            self.compute = time.perf_counter() - self.began

    def finish(self) -> None:
        if self.factor > 0.0:
            pause = self.factor * self.compute
            time.sleep(pause)
            self.slept += pause
