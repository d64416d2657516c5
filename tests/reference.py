"""Plain-numpy references of the sync strategies, for a linear model with a squared loss.

The model is ``y = W x + b``; rank ``r`` at step ``t`` sees its own fixed batch
(:func:`batch`); the loss is ``0.5 * |W x + b - y|^2`` averaged over the batch. Every function
returns, per step, the parameters of every group and the global model, so a test can compare a
real run step by step.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IN, OUT, BATCH = 5, 3, 4
Params = Tuple[np.ndarray, np.ndarray]  # (W, b)


def initial() -> Params:
    rng = np.random.RandomState(7)
    return rng.uniform(-0.5, 0.5, (OUT, IN)), rng.uniform(-0.5, 0.5, (OUT,))


def batch(rank: int, step: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(1000 * rank + step)
    return rng.normal(size=(BATCH, IN)), rng.normal(size=(BATCH, OUT))


def grad(p: Params, x: np.ndarray, y: np.ndarray) -> Params:
    w, b = p
    err = x @ w.T + b - y
    return err.T @ x / len(x), err.sum(0) / len(x)


def group_grad(p: Params, members: Sequence[int], step: int) -> Params:
    gs = [grad(p, *batch(r, step)) for r in members]
    return np.mean([g[0] for g in gs], 0), np.mean([g[1] for g in gs], 0)


def axpy(a: float, x: Params, y: Params) -> Params:
    return a * x[0] + y[0], a * x[1] + y[1]


def run(strategy: Dict, groups: List[List[int]], steps: int, lr: float) -> List[Dict]:
    """Simulate ``steps`` steps. ``strategy``: {"name": ..., "period": ..., ...}; with
    ``"overlap": tau >= 1`` the exchange of step ``t`` starts from a snapshot and is applied at
    the end of step ``t + tau`` (:func:`_run_overlapped`).

    Returns one record per step: {"x": [params of each group], "global": params}.
    """
    if strategy.get("overlap", 0):
        return _run_overlapped(strategy, groups, steps, lr)
    name, period, n = strategy["name"], strategy.get("period", 1), len(groups)
    x0 = initial()
    xs = [x0 for _ in groups]
    c = x0  # EASGD centre / PS weights / ModelAverage's average
    start = x0
    v = (np.zeros_like(x0[0]), np.zeros_like(x0[1]))
    out = []
    for t in range(1, steps + 1):
        gs = [group_grad(x, g, t) for x, g in zip(xs, groups)]
        if name == "GradientPush":
            mean = (np.mean([g[0] for g in gs], 0), np.mean([g[1] for g in gs], 0))
            c = axpy(-lr, mean, c)
            xs = [c for _ in groups]
        else:
            xs = [axpy(-lr, g, x) for x, g in zip(xs, gs)]
        if name != "GradientPush" and t % period == 0:
            if name == "ModelAverage":
                c = (np.mean([x[0] for x in xs], 0), np.mean([x[1] for x in xs], 0))
                xs = [c for _ in groups]
            elif name == "EASGD":
                a = strategy["alpha"]
                ds = [axpy(-1.0, c, x) for x in xs]
                ds = [(a * d[0], a * d[1]) for d in ds]
                xs = [axpy(-1.0, d, x) for x, d in zip(xs, ds)]
                for d in ds:
                    c = axpy(1.0, d, c)
            elif name == "DiLoCo":
                m, olr = strategy["momentum"], strategy["outer_lr"]
                dm = [np.mean([start[i] - x[i] for x in xs], 0) for i in range(2)]
                v = (m * v[0] + dm[0], m * v[1] + dm[1])
                if strategy.get("nesterov", True):
                    c = (c[0] - olr * (dm[0] + m * v[0]), c[1] - olr * (dm[1] + m * v[1]))
                else:
                    c = (c[0] - olr * v[0], c[1] - olr * v[1])
                start = c
                xs = [c for _ in groups]
            else:
                raise ValueError(name)
        out.append({"x": [(x[0].copy(), x[1].copy()) for x in xs], "global": c})
    assert n == len(xs)
    return out


def _mean(ps: Sequence[Params]) -> Params:
    return np.mean([p[0] for p in ps], 0), np.mean([p[1] for p in ps], 0)


def _run_overlapped(strategy: Dict, groups: List[List[int]], steps: int, lr: float) -> List[Dict]:
    """The overlapped exchange (sync rounds), ``tau = strategy["overlap"]``:

    * at the end of step ``t`` (``t % period == 0``), every group's snapshot is ``s_g = x_t``;
      the servers' state ``c`` moves at once, from the snapshots;
    * at the end of step ``t + tau`` each group applies: ModelAverage ``x = mean(s) + x - s_g``;
      EASGD ``x = x - d_g`` with ``d_g = alpha (s_g - c_old)``; DiLoCo ``x = w + x - s_g``
      and ``x_start = w``.

    An exchange still in flight after the last step is completed by ``pull_global`` /
    ``global_model`` / ``shutdown``: the last record then also has ``"final"``, every group's
    parameters with it applied.
    """
    name, period, tau = strategy["name"], strategy["period"], strategy["overlap"]
    x0 = initial()
    xs = [x0 for _ in groups]
    c, start = x0, x0
    v = (np.zeros_like(x0[0]), np.zeros_like(x0[1]))
    pending = None  # (apply step, function of (group, x) -> new x, DiLoCo's new x_start)
    out: List[Dict] = []

    def launch():
        nonlocal c, v, start
        snaps = list(xs)
        if name == "ModelAverage":
            c = _mean(snaps)
            mean = c
            return lambda g, x: axpy(1.0, mean, axpy(-1.0, snaps[g], x)), None
        if name == "EASGD":
            a = strategy["alpha"]
            ds = [(a * (s[0] - c[0]), a * (s[1] - c[1])) for s in snaps]
            for d in ds:
                c = axpy(1.0, d, c)
            return lambda g, x: axpy(-1.0, ds[g], x), None
        if name == "DiLoCo":
            m, olr = strategy["momentum"], strategy["outer_lr"]
            dm = [np.mean([start[i] - s[i] for s in snaps], 0) for i in range(2)]
            v = (m * v[0] + dm[0], m * v[1] + dm[1])
            if strategy.get("nesterov", True):
                c = (c[0] - olr * (dm[0] + m * v[0]), c[1] - olr * (dm[1] + m * v[1]))
            else:
                c = (c[0] - olr * v[0], c[1] - olr * v[1])
            w = c
            return lambda g, x: axpy(1.0, w, axpy(-1.0, snaps[g], x)), w
        raise ValueError(name)

    def complete(fn, new_start):
        nonlocal start
        if new_start is not None:
            start = new_start
        return [fn(g, x) for g, x in enumerate(xs)]

    for t in range(1, steps + 1):
        gs = [group_grad(x, g, t) for x, g in zip(xs, groups)]
        xs = [axpy(-lr, g, x) for x, g in zip(xs, gs)]
        if t % period == 0:
            pending = (t + tau, *launch())
        if pending is not None and pending[0] == t:  # tau < period: never a new launch's
            xs = complete(*pending[1:])
            pending = None
        out.append({"x": [(x[0].copy(), x[1].copy()) for x in xs], "global": c})
    if pending is not None:
        out[-1]["final"] = complete(*pending[1:])
    else:
        out[-1]["final"] = out[-1]["x"]
    return out


class OuterSGD:
    """The servers' outer SGD of DiLoCo in numpy (:class:`hvd_ps.ps.protocol.Nesterov`): what
    arrived is scaled by ``scale``; the momentum is applied once every ``delay`` pushes with
    the sum ``A`` of the scaled pushes since (``delay = 1``: every push, sync DiLoCo)."""

    def __init__(self, lr: float, momentum: float, nesterov: bool, scale: float, delay: int):
        self.lr, self.m, self.nesterov = lr, momentum, nesterov
        self.scale, self.delay = scale, delay
        self.v = None
        self.a = None
        self.k = 0

    def step(self, w: np.ndarray, received: np.ndarray) -> np.ndarray:
        d = self.scale * received
        self.a = d if self.a is None else self.a + d
        self.k += 1
        if self.k < self.delay:
            return w - self.lr * d
        v_old = self.v
        self.v = self.a if v_old is None else self.m * v_old + self.a
        self.a, self.k = None, 0
        if self.nesterov:
            return w - self.lr * (d + self.m * self.v)
        return w - self.lr * (d if v_old is None else d + self.m * v_old)


class AsyncModel:
    """The async rules in numpy, one group step at a time in whatever order a caller picks
    (:func:`run_async`: in turns; :func:`run_in_order`: an order of exchanges). Arguments
    as :func:`run_async`'s."""

    def __init__(
        self,
        strategy: Dict,
        groups: List[List[int]],
        lr: float,
        momentum: float = 0.0,
        share: Optional[float] = None,
    ) -> None:
        self.strategy, self.groups, self.lr = strategy, groups, lr
        self.name, self.period = strategy["name"], strategy.get("period", 1)
        share = 1.0 / len(groups) if share is None else share
        delay = max(1, round(1.0 / share))
        x0 = initial()
        self.xs = [x0 for _ in groups]
        self.starts = [x0 for _ in groups]
        self.c = x0
        self.outer: Optional[List[OuterSGD]] = None
        if self.name == "DiLoCo":
            s = strategy
            self.outer = [
                OuterSGD(s["outer_lr"], s["momentum"], s["nesterov"], share, delay)
                for _ in range(2)
            ]
        if self.name == "GradientPush":  # sgd on the servers: delayed Nesterov, lr / G a push
            self.outer = [OuterSGD(lr, momentum, True, share, delay) for _ in range(2)]
        self.tau = strategy.get("overlap", 0)
        self.pending: List[Optional[Tuple[int, Params, Params]]] = [None for _ in groups]

    def step(self, g: int, t: int, exchange: Optional[bool] = None, weight: float = 1.0) -> None:
        """Group ``g``'s step ``t``: its local update, and its exchange if ``t`` has one
        (``exchange``; by default every ``period`` steps), applied at once: the servers move
        now. DiLoCo pushes ``weight * D`` (``period='auto'``: its local steps over the base)."""
        name, strategy, lr = self.name, self.strategy, self.lr
        gg = group_grad(self.xs[g], self.groups[g], t)
        if name == "GradientPush":
            assert self.outer is not None
            self.c = tuple(o.step(self.c[i], gg[i]) for i, o in enumerate(self.outer))
            self.xs[g] = self.c
            return
        self.xs[g] = axpy(-lr, gg, self.xs[g])
        if (t % self.period == 0) if exchange is None else exchange:
            snap = self.xs[g]  # overlap: the exchange starts from x_t, the servers move now
            c = self.c
            if name == "EASGD":
                a = strategy["alpha"]
                d = (a * (snap[0] - c[0]), a * (snap[1] - c[1]))
                c = axpy(1.0, d, c)
                change = axpy(-1.0, d, snap)  # x_t - d
            elif name == "DiLoCo":
                assert self.outer is not None
                start = self.starts[g]
                c = tuple(
                    o.step(c[i], weight * (start[i] - snap[i])) for i, o in enumerate(self.outer)
                )
                change = c  # x = w (+ the steps since x_t), x_start = w
            else:
                raise ValueError(name)
            self.c = c
            self.pending[g] = (t + self.tau, snap, change)
        job = self.pending[g]
        if job is not None and job[0] == t:  # applied at the end of step t + tau
            _, snap, change = job
            self.xs[g] = axpy(1.0, change, axpy(-1.0, snap, self.xs[g]))
            if name == "DiLoCo":
                self.starts[g] = change
            self.pending[g] = None

    def record(self) -> Dict:
        return {"x": [(x[0].copy(), x[1].copy()) for x in self.xs], "global": self.c}


def run_async(
    strategy: Dict,
    groups: List[List[int]],
    steps: int,
    lr: float,
    momentum: float = 0.0,
    share: Optional[float] = None,
) -> List[Dict]:
    """The async rules with a fixed push order: at every step the groups step one after the
    other, in group order, each completing its exchange (if the step has one) before the next
    group starts its step. ``momentum`` is the momentum of GradientPush's ``sgd`` on the servers.

    * GradientPush (``sgd``): delayed Nesterov (:class:`OuterSGD` with ``lr``, ``scale = 1/G``,
      ``delay = G``) on the pushed gradient; ``x = w``;
    * EASGD: ``d = alpha (x - c)`` with the current ``c``; ``x -= d``; ``c += d``;
    * DiLoCo: ``D = x_start - x``; delayed Nesterov (:class:`OuterSGD` with ``scale = 1/G``,
      ``delay = G``); ``x = x_start = w``.

    With ``"overlap": tau`` (EASGD, DiLoCo) the exchange of step ``t`` starts from the snapshot
    ``x_t`` in the group's turn and is applied at the end of its step ``t + tau``: EASGD
    ``x = x - d``, DiLoCo ``x = w + x - x_t`` and ``x_start = w``.

    ``share`` is the part of a sync round each push makes, ``1/G`` (the default: these
    rules); ``share=1`` makes each push a whole step, momentum included (the earlier rules).

    Returns one record per step: {"x": [params of each group], "global": the servers' value}.
    """
    model = AsyncModel(strategy, groups, lr, momentum, share)
    out = []
    for t in range(1, steps + 1):
        for g in range(len(groups)):  # the fixed push order
            model.step(g, t)
        out.append(model.record())
    return out


def run_in_order(
    strategy: Dict,
    groups: List[List[int]],
    order: Sequence[int],
    lr: float,
    momentum: float = 0.0,
    steps: Optional[Sequence[int]] = None,
    weights: Optional[Sequence[float]] = None,
) -> Dict:
    """The async rules when the groups' exchanges reach the servers in ``order`` (a group id
    per exchange; an overlapped one when it starts, applied ``overlap`` steps later, in the
    group's next turn): each group takes its local steps up to its next exchange in its turn,
    ``period`` of them or (``period='auto'``) ``steps[i]`` before the ``i``-th exchange of
    ``order``, whose push DiLoCo weights by ``weights[i]``. Returns the last record (as
    :func:`run_async`'s)."""
    model = AsyncModel(strategy, groups, lr, momentum)
    t = [0 for _ in groups]
    for i, g in enumerate(order):
        h = model.period if steps is None else steps[i]
        for j in range(h):
            t[g] += 1
            w = 1.0 if weights is None else weights[i]
            model.step(g, t[g], exchange=j == h - 1, weight=w)
    return model.record()


def auto_period(base: int, low: int, high: int, pace: float, others: Sequence[float]) -> int:
    """``period='auto'``: a group's next local steps at its own ``pace`` (seconds per step),
    the other groups' paces ``others`` (0: unknown): ``base`` times the fastest pace over its
    own, rounded, within ``low .. high``; ``base`` while its own pace is unknown."""
    if pace <= 0:
        return base
    fastest = min([pace] + [p for p in others if p > 0])
    return int(min(high, max(low, round(base * fastest / pace))))


def ssp_order(seconds: Sequence[float], period: int, exchanges: int, bound: Optional[int]) -> List:
    """The order in which groups complete their exchanges under bounded staleness
    (:mod:`hvd_ps.ps.clock`): group ``g`` takes ``seconds[g]`` a step and exchanges every
    ``period`` steps, ``exchanges`` times; exchange ``k`` waits until ``k - c_j <= bound`` for
    every other group ``j`` still training (``c_j`` its completed exchanges; None: no wait).
    Exchanges take no time; a tie goes to the lower group id (a test avoids ties).

    Returns ``(order, staleness)``: a group id per exchange, and the staleness each started with.
    """
    n = len(seconds)
    done = [0] * n
    ready = [period * s for s in seconds]  # when each group's next exchange is ready
    order: List[int] = []
    stale: List[int] = []

    def gap(g: int) -> int:
        others = [done[j] for j in range(n) if j != g and done[j] < exchanges]
        return max(0, done[g] + 1 - min(others)) if others else 0

    while len(order) < n * exchanges:
        free = [g for g in range(n) if done[g] < exchanges and (bound is None or gap(g) <= bound)]
        g = min(free, key=lambda j: (ready[j], j))
        now = ready[g]
        blocked = [j for j in range(n) if done[j] < exchanges and j not in free]
        stale.append(gap(g))
        done[g] += 1
        order.append(g)
        ready[g] = now + period * seconds[g]
        for j in blocked:  # a group released now starts its exchange now, not earlier
            if bound is None or gap(j) <= bound:
                ready[j] = max(ready[j], now)
    return order, stale
