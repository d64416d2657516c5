"""Plain-numpy references of the sync strategies, for a linear model with a squared loss.

The model is ``y = W x + b``; rank ``r`` at step ``t`` sees its own fixed batch
(:func:`batch`); the loss is ``0.5 * |W x + b - y|^2`` averaged over the batch. Every function
returns, per step, the parameters of every group and the global model, so a test can compare a
real run step by step.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

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
