"""Plain-numpy reference of the compressed wire (``int8``/``int4``) under every sync strategy,
in float32 with the same order of operations as the real run, so that a run matches it bit
for bit.

The model is tests/reference.py's linear model; every rank's gradient is :func:`grad32` of
its own parameters and batch (the MPI test writes the same gradient into Gluon's arrays, so no
framework reduction is involved). A group's gradient is the sum over its ranks times
``1 / group size`` (exact for groups of one or two ranks), the local step plain SGD.

The wire: each shard of the flat buffer ``[b, W (row-major)]`` is quantized in blocks of
``block`` elements (the last block of a shard may be short): ``m = max|v|``, ``inv = Q / m``,
``code = clip(rint(v * inv), -Q, Q)``, ``scale = m / Q``, decoded ``code * scale``; every
leader encodes what its strategy sends plus its residual and keeps the rest as its residual;
the servers sum the decoded pushes in group order, run the strategy's rule on their float32
state and reply with the encoded change since the copy the leaders hold (their shadow).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import reference as ref

F = np.float32


def grad32(w: np.ndarray, b: np.ndarray, rank: int, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s gradient at ``step`` for float32 parameters, as float32."""
    x, y = ref.batch(rank, step)
    gw, gb = ref.grad((w.astype(np.float64), b.astype(np.float64)), x, y)
    return gw.astype(F), gb.astype(F)


def flat(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The parameters as the trainer fuses them: in name order (Horovod's trainer sorts its
    parameters by name), the bias before the weight."""
    return np.concatenate([b.ravel(), w.ravel()]).astype(F)


def group_grad(x: np.ndarray, members: Sequence[int], step: int) -> np.ndarray:
    """A group's gradient at its flat parameters ``x``: its ranks' :func:`grad32` summed in
    rank order, times ``1 / len(members)`` (float32, as Horovod's average of one or two)."""
    w, b = split(x)
    parts = [flat(*grad32(w, b, r, step)) for r in members]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return F(1.0 / len(members)) * total


def split(v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return v[ref.OUT :].reshape(ref.OUT, ref.IN), v[: ref.OUT]


def quantize(v: np.ndarray, bits: int, block: int, bounds: Sequence[int]) -> np.ndarray:
    """What ``v`` decodes to after the wire (float32), shard by shard, block by block."""
    q = F((1 << (bits - 1)) - 1)
    out = np.zeros_like(v)
    for lo, hi in zip(bounds, bounds[1:]):
        for a in range(lo, hi, block):
            blk = v[a : min(hi, a + block)]
            m = F(np.max(np.abs(blk)))
            if m < F(2.0**-126):
                continue
            inv, scale = F(q / m), F(m / q)
            out[a : a + blk.size] = np.clip(np.rint(blk * inv), -q, q).astype(F) * scale
    return out


def outer_step(w, d, v, v_old, lr, m, nesterov: bool):
    """The servers' outer SGD once the momentum ``v`` is updated (``v_old`` before, None at
    the first): Nesterov ``w - lr (d + m v)``, or heavy ball ``w - lr (d + m v_old)``."""
    if nesterov:
        return w - lr * (d + m * v)
    if v_old is None:
        return w - lr * d
    return w - lr * (d + m * v_old)


class Servers:
    """The servers' float32 state under a sync strategy's rule, and their shadow."""

    def __init__(self, spec: Dict, x0: np.ndarray, groups: int, lr: float) -> None:
        self.spec, self.groups, self.lr = spec, groups, lr
        self.state, self.shadow = x0.copy(), x0.copy()
        self.v = None

    def round(self, total: np.ndarray) -> None:
        name, g = self.spec["name"], self.groups
        if name == "EASGD":
            self.state = self.state + total
        elif name == "ModelAverage":
            self.state = self.state + total * F(1.0 / g)
        elif name == "GradientPush":
            self.state = self.state - F(self.lr) * (F(1.0 / g) * total)
        elif name == "DiLoCo":
            m, olr = F(self.spec["momentum"]), F(self.spec["outer_lr"])
            d = total * F(1.0 / g)
            v_old = self.v
            self.v = d.copy() if v_old is None else v_old * m + d
            nesterov = self.spec.get("nesterov", True)
            self.state = outer_step(self.state, d, self.v, v_old, olr, m, nesterov)
        else:
            raise ValueError(name)

    def reply(self, bits: int, block: int, bounds: Sequence[int]) -> np.ndarray:
        change = quantize(self.state - self.shadow, bits, block, bounds)
        self.shadow = self.shadow + change
        return change


def run(
    spec: Dict,
    groups: List[List[int]],
    steps: int,
    lr: float,
    bits: int,
    block: int,
    bounds: Sequence[int],
    feedback: bool = True,
) -> List[Dict]:
    """Simulate ``steps`` steps of a sync strategy ``spec`` (as tests/reference.py takes it,
    with ``"overlap"``) on the compressed wire. Returns per step ``{"x": [each group's flat
    float32 parameters], "global": the servers' state}``; the last record also has
    ``"final"``: every group's parameters once an exchange still in flight is applied."""
    name, period, tau = spec["name"], spec.get("period", 1), spec.get("overlap", 0)
    n = len(groups)
    x0 = flat(*[a.astype(F) for a in ref.initial()])
    xs = [x0.copy() for _ in groups]
    copy = x0.copy()  # every leader's copy of the servers' state (all agree in sync mode)
    start = x0.copy()  # DiLoCo's x_start
    res = [np.zeros_like(x0) for _ in groups]
    srv = Servers(spec, x0, n, lr)
    pending = None
    out: List[Dict] = []

    def push(sends: List[np.ndarray]) -> np.ndarray:
        decoded = []
        for g, s in enumerate(sends):
            v = s + res[g]
            d = quantize(v, bits, block, bounds)
            res[g] = v - d if feedback else np.zeros_like(v)
            decoded.append(d)
        total = decoded[0]
        for d in decoded[1:]:
            total = total + d
        srv.round(total)
        return srv.reply(bits, block, bounds)

    def sends_from(src: List[np.ndarray], blocking: bool) -> List[np.ndarray]:
        nonlocal xs
        if name == "ModelAverage":
            return [s - copy for s in src]
        if name == "DiLoCo":
            return [start - s for s in src]
        if name == "EASGD":
            a = F(spec["alpha"])
            if blocking:  # the fused op's elastic step: d = a (x - c), x -= d
                ds = [a * (s - copy) for s in src]
                xs = [x - d for x, d in zip(xs, ds)]
            else:  # its pack_axpby: d = a x_t + (-a) c
                ds = [a * s + (-a) * copy for s in src]
            return ds
        raise ValueError(name)

    for t in range(1, steps + 1):
        gs = [group_grad(x, members, t) for x, members in zip(xs, groups)]
        if name == "GradientPush":
            change = push([F(1.0) * g for g in gs])  # the leader packs rescale * g (rescale 1)
            copy = copy + change
            xs = [copy.copy() for _ in groups]
        else:
            xs = [x - F(lr) * g for x, g in zip(xs, gs)]
            if t % period == 0 and tau == 0:
                change = push(sends_from(xs, True))
                copy = copy + change
                if name in ("ModelAverage", "DiLoCo"):
                    xs = [copy.copy() for _ in groups]
                    start = copy.copy()
            elif t % period == 0:
                snaps = [x.copy() for x in xs]
                sends = sends_from(snaps, False)
                pending = (t + tau, snaps, sends, push(sends))
            if pending is not None and pending[0] == t:
                xs, copy, start = _apply(name, pending, xs, copy, start)
                pending = None
        out.append({"x": [x.copy() for x in xs], "global": srv.state.copy()})
    if pending is not None:
        out[-1]["final"] = _apply(name, pending, xs, copy, start)[0]
    else:
        out[-1]["final"] = out[-1]["x"]
    return out


def _apply(name, pending, xs, copy, start):
    _, snaps, sends, change = pending
    copy = copy + change
    if name == "EASGD":
        return [x - d for x, d in zip(xs, sends)], copy, start
    return [(copy - s) + x for x, s in zip(xs, snaps)], copy, copy.copy()


class AsyncServers:
    """The servers' float32 state under an async rule (each push applied alone, ``1/G`` of a
    round: EASGD adds ``d``; DiLoCo and GradientPush's ``sgd`` run delayed Nesterov, the
    momentum applied once every ``G`` pushes), with one shadow per group."""

    def __init__(self, spec: Dict, x0: np.ndarray, groups: int, lr: float) -> None:
        self.spec, self.groups = spec, groups
        self.state = x0.copy()
        self.shadow = [x0.copy() for _ in range(groups)]
        if spec["name"] == "DiLoCo":
            self.lr, self.m = F(spec["outer_lr"]), F(spec["momentum"])
            self.nesterov = spec.get("nesterov", True)
        else:  # GradientPush's sgd without momentum
            self.lr, self.m, self.nesterov = F(lr), F(0.0), True
        self.v = None
        self.a = None
        self.k = 0

    def push(self, g: int, arrived: np.ndarray) -> None:
        if self.spec["name"] == "EASGD":
            self.state = self.state + arrived
            return
        d = arrived * F(1.0 / self.groups)
        self.a = d.copy() if self.a is None else self.a + d
        self.k += 1
        if self.k < self.groups:
            self.state = self.state - self.lr * d
            return
        v_old = self.v
        self.v = self.a.copy() if v_old is None else v_old * self.m + self.a
        self.a, self.k = None, 0
        self.state = outer_step(self.state, d, self.v, v_old, self.lr, self.m, self.nesterov)

    def reply(self, g: int, bits: int, block: int, bounds: Sequence[int]) -> np.ndarray:
        change = quantize(self.state - self.shadow[g], bits, block, bounds)
        self.shadow[g] = self.shadow[g] + change
        return change


def run_async(
    spec: Dict,
    groups: List[List[int]],
    steps: int,
    lr: float,
    bits: int,
    block: int,
    bounds: Sequence[int],
) -> List[Dict]:
    """An async strategy on the compressed wire, the groups taking their turns in group order
    at every step (each group's exchange applied on the servers before the next group steps).
    Records as :func:`run` returns them."""
    name, period, tau = spec["name"], spec.get("period", 1), spec.get("overlap", 0)
    n = len(groups)
    x0 = flat(*[a.astype(F) for a in ref.initial()])
    xs = [x0.copy() for _ in groups]
    copies = [x0.copy() for _ in groups]
    starts = [x0.copy() for _ in groups]
    res = [np.zeros_like(x0) for _ in groups]
    srv = AsyncServers(spec, x0, n, lr)
    pending: List = [None] * n
    out: List[Dict] = []

    def push(g: int, send: np.ndarray) -> np.ndarray:
        v = send + res[g]
        d = quantize(v, bits, block, bounds)
        res[g] = v - d
        srv.push(g, d)
        return srv.reply(g, bits, block, bounds)

    def apply(g: int) -> None:
        _, snap, send, change = pending[g]
        copies[g] = copies[g] + change
        if name == "EASGD":
            xs[g] = xs[g] - send
        else:
            xs[g] = (copies[g] - snap) + xs[g]
            starts[g] = copies[g].copy()
        pending[g] = None

    for t in range(1, steps + 1):
        for g, members in enumerate(groups):
            grad = group_grad(xs[g], members, t)
            if name == "GradientPush":
                copies[g] = copies[g] + push(g, F(1.0) * grad)
                xs[g] = copies[g].copy()
                continue
            xs[g] = xs[g] - F(lr) * grad
            if t % period == 0 and tau == 0:
                if name == "EASGD":
                    a = F(spec["alpha"])
                    d = a * (xs[g] - copies[g])
                    xs[g] = xs[g] - d
                    copies[g] = copies[g] + push(g, d)
                else:  # DiLoCo
                    copies[g] = copies[g] + push(g, starts[g] - xs[g])
                    xs[g] = copies[g].copy()
                    starts[g] = copies[g].copy()
            elif t % period == 0:
                snap = xs[g].copy()
                if name == "EASGD":
                    a = F(spec["alpha"])
                    send = a * snap + (-a) * copies[g]
                else:
                    send = starts[g] - snap
                pending[g] = (t + tau, snap, send, push(g, send))
            if pending[g] is not None and pending[g][0] == t:
                apply(g)
        out.append({"x": [x.copy() for x in xs], "global": srv.state.copy()})
    for g in range(n):
        if pending[g] is not None:
            apply(g)
    out[-1]["final"] = [x.copy() for x in xs]
    return out


def quorum_rounds(groups: int, exchanges: int, late: int) -> List[Dict[int, int]]:
    """The rounds of a quorum run whose last group misses round ``late`` (the others close it
    without it): each round's members, group -> its exchange number. From then on the last
    group's exchange ``k`` joins round ``k + 1``, and its last exchange closes a round alone
    (the others are done)."""
    slow = groups - 1
    out: List[Dict[int, int]] = []
    for r in range(1, exchanges + 2):
        members = {g: r for g in range(slow)} if r <= exchanges else {}
        if r < late:
            members[slow] = r
        elif r > late:
            members[slow] = r - 1
        out.append(members)
    return out


def quorum_rounds_flushed(groups: int, exchanges: int, late: int) -> List[Dict[int, int]]:
    """As :func:`quorum_rounds`, but the run saves a checkpoint once the last group's late
    exchange ``late`` is done: the save closes the open round (the late push alone), and every
    later exchange ``k`` of every group joins round ``k + 1``."""
    slow = groups - 1
    out: List[Dict[int, int]] = [{g: r for g in range(groups)} for r in range(1, late)]
    out.append({g: late for g in range(slow)})
    out.append({slow: late})
    out += [{g: k for g in range(groups)} for k in range(late + 1, exchanges + 1)]
    return out


def run_quorum(
    spec: Dict,
    groups: List[List[int]],
    steps: int,
    lr: float,
    bits: int,
    block: int,
    bounds: Sequence[int],
    rounds: List[Dict[int, int]],
    answered: Optional[Dict[Tuple[int, int], Sequence[int]]] = None,
) -> Dict:
    """A sync strategy on the compressed wire whose rounds close with a quorum: ``rounds``
    lists each round's members (group -> its exchange number ``k``, pushed at step ``k *
    period``); ``answered[(g, k)]`` is, per shard of ``bounds``, how many rounds its server
    had applied when group ``g``'s exchange ``k`` got its reply (default: up to the round it
    joined; a late push is answered before its round). A round sums its members' decoded
    pushes in group order, and the rule takes the sum as that of a full round (the others'
    pushes zero); the servers keep one shadow per group, and a reply is the
    change of the state since that group's shadow. Returns ``{"x": per group, its parameters
    after every step, "final": per group, with an exchange in flight applied, "global": the
    servers' state}``."""
    name, period, tau = spec["name"], spec.get("period", 1), spec.get("overlap", 0)
    n = len(groups)
    x0 = flat(*[a.astype(F) for a in ref.initial()])
    srv = Servers(spec, x0, n, lr)
    shadows = [x0.copy() for _ in groups]
    xs = [x0.copy() for _ in groups]
    copies = [x0.copy() for _ in groups]
    starts = [x0.copy() for _ in groups]
    res = [np.zeros_like(x0) for _ in groups]
    done = [0] * n  # steps each group has taken
    pending: List = [None] * n
    hist: List[List[np.ndarray]] = [[] for _ in groups]
    decoded: Dict[Tuple[int, int], np.ndarray] = {}
    sent: Dict[Tuple[int, int], np.ndarray] = {}
    replies: Dict[int, List[Tuple[int, int]]] = {}
    shards = len(bounds) - 1
    after: Dict[Tuple[int, int], Sequence[int]] = {}
    for r, members in enumerate(rounds, start=1):
        for g, k in members.items():
            after[(g, k)] = (answered or {}).get((g, k), [r] * shards)
            replies.setdefault(max(after[(g, k)]), []).append((g, k))
    states = [x0.copy()]  # the servers' state after each round

    def grad(g: int, t: int) -> np.ndarray:
        return group_grad(xs[g], groups[g], t)

    def apply(g: int) -> None:
        _, snap, send, change = pending[g]
        copies[g] = copies[g] + change
        if name == "EASGD":
            xs[g] = xs[g] - send
        else:
            xs[g] = (copies[g] - snap) + xs[g]
            starts[g] = copies[g].copy()
        pending[g] = None

    def step(g: int, t: int) -> None:
        """Step ``t`` of group ``g`` that is no exchange: its local update, then an
        exchange in flight due now."""
        if name != "GradientPush":
            xs[g] = xs[g] - F(lr) * grad(g, t)
        if pending[g] is not None and pending[g][0] == t:
            apply(g)
        hist[g].append(xs[g].copy())
        done[g] = t

    def send(g: int, k: int) -> np.ndarray:
        """Group ``g`` up to its exchange ``k``'s push: what it sends."""
        t = k * period
        for s in range(done[g] + 1, t):
            step(g, s)
        if name == "GradientPush":
            return F(1.0) * grad(g, t)
        xs[g] = xs[g] - F(lr) * grad(g, t)
        src = xs[g].copy()
        if name == "ModelAverage":
            return src - copies[g]
        if name == "DiLoCo":
            return starts[g] - src
        a = F(spec["alpha"])
        if tau == 0:  # the fused elastic step: d = a (x - c), x -= d
            d = a * (src - copies[g])
            xs[g] = xs[g] - d
            return d
        return a * src + (-a) * copies[g]

    def push(g: int, k: int) -> None:
        if (g, k) in decoded:
            return
        sent[(g, k)] = send(g, k)
        v = sent[(g, k)] + res[g]
        decoded[(g, k)] = d = quantize(v, bits, block, bounds)
        res[g] = v - d

    def reply(g: int, k: int) -> None:
        push(g, k)
        change = np.empty_like(x0)
        for j, r in enumerate(after[(g, k)]):
            lo, hi = bounds[j], bounds[j + 1]
            diff = states[r][lo:hi] - shadows[g][lo:hi]
            change[lo:hi] = quantize(diff, bits, block, [0, hi - lo])
        shadows[g] = shadows[g] + change
        t = k * period
        if tau == 0:
            copies[g] = copies[g] + change
            if name in ("ModelAverage", "DiLoCo", "GradientPush"):
                xs[g] = copies[g].copy()
                starts[g] = copies[g].copy()
        else:
            pending[g] = (t + tau, xs[g].copy(), sent[(g, k)], change)
        hist[g].append(xs[g].copy())
        done[g] = t

    for g, k in replies.get(0, []):
        reply(g, k)
    for r, members in enumerate(rounds, start=1):
        total = None
        for g in sorted(members):
            push(g, members[g])
            d = decoded[(g, members[g])]
            total = d if total is None else total + d
        srv.round(total)
        states.append(srv.state.copy())
        for g, k in replies.get(r, []):
            reply(g, k)
    for g in range(n):
        for t in range(done[g] + 1, steps + 1):
            step(g, t)
    final = []
    for g in range(n):
        if pending[g] is not None:
            apply(g)
        final.append(xs[g].copy())
    return {"x": hist, "final": final, "global": srv.state.copy()}
