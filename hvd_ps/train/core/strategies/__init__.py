"""How groups meet at the PS tier: the strategies a user picks, as small immutable values.

Notation: ``G`` groups; ``x`` the parameters of a group (identical on its members, flattened
into fused buffers, per dtype and at most ``HVD_PS_BUCKET_MB`` each); the leader acts at every
step ``t`` with ``t % period == 0``, after the group's local update; ``c`` / ``w`` live on the
PS. A strategy here holds its arguments only (checked when it is made, compared across groups
by equality, shown by its ``repr``). At the trainer's first step it is bound to the job
(:meth:`Strategy.bind`: the number of groups ``G`` and the wire dtype) as an
:class:`hvd_ps.train.core.exchanges.Exchange`, which runs the leader's side of the table below on
flat buffers with the fused op and names the servers' side, a record of :mod:`hvd_ps.ps.protocol`.

================  ==========================  ==========================  ======================
strategy          leader pushes               server does                 leader then sets
================  ==========================  ==========================  ======================
GradientPush      group-mean gradient ``g``   optimizer on ``w``, one     ``x = w``
                  (scaled by 1/batch)         step with the round's mean
ModelAverage      ``x``                       ``w = sum of the round``    ``x = w / G``
EASGD             ``d = alpha (x - c)``,      ``c += d``                  ``x -= d``
                  after pulling ``c``
DiLoCo            ``D = x_start - x``         ``v = m v + D'``,           ``x = x_start = w``
                                              ``w -= lr (D' + m v)``
                                              (``D'``: the round's mean)
================  ==========================  ==========================  ======================

Async rules (``mode='async'``): the servers apply each push as it arrives, and **each push is
1/G of a sync round**, so ``G`` pushes move ``w`` as one sync round of them would and no rule
needs its hyperparameters divided by ``G``:

* DiLoCo (delayed Nesterov, after Async Local-SGD, arXiv 2401.09135): each push ``D`` moves
  ``w -= lr D / G`` at once and adds ``D / G`` to ``A``; every ``G``-th push also applies the
  momentum, once: ``v = m v + A; A = 0; w -= lr m v`` (Nesterov; heavy ball: ``w -= lr m
  v_old``). When the ``G`` pushes are equal this is the sync round's step exactly.
* GradientPush with MXNet's ``sgd`` or ``nag``: the same delayed Nesterov on the pushed
  gradient (``D = clip(g / G) + wd w``), so a stale gradient enters the momentum once, at
  ``1/G`` of a round, and heavy-ball ``sgd`` momentum becomes Nesterov (per-push momentum on
  stale gradients measured unstable). Other optimizers run on every push with the learning
  rate ``lr / G``, their state updated per push.
* EASGD: ``c += d`` per push, with ``alpha`` defaulting to ``0.9 / G`` (each push pulls the
  centre ``1/G`` of ``beta = 0.9``).

Overlap (``overlap=tau``, ModelAverage, EASGD and DiLoCo; ``0 <= tau < period``): with
``tau >= 1`` the leader starts the exchange at step ``t`` from a snapshot ``x_t``
(:meth:`hvd_ps.train.core.exchanges.Exchange.launch`) and applies it at the end of step ``t + tau``
(:meth:`hvd_ps.train.core.exchanges.Exchange.apply`), the group training on meanwhile:

* ModelAverage: ``x = mean_g(x_{g,t}) + (x_{t+tau} - x_t)``
* EASGD: ``d = alpha (x_t - c)`` with ``c`` pulled at ``t``; servers ``c += d``;
  ``x = x_{t+tau} - d``
* DiLoCo: ``D = x_start - x_t``; the servers' outer step gives ``w``;
  ``x = w + (x_{t+tau} - x_t)``, ``x_start = w``

``tau = 0`` is the blocking exchange above, unchanged.
"""

from .base import MODES, Entry, Exchange, ServerOptimizer, Strategy, registered

# isort: off
# registered in this order, the paper's (messages that list strategies follow it)
from .gradient_push import GradientPush
from .model_average import ModelAverage
from .easgd import EASGD
from .diloco import DiLoCo

# isort: on

__all__ = [
    "MODES",
    "DiLoCo",
    "EASGD",
    "Entry",
    "Exchange",
    "GradientPush",
    "ModelAverage",
    "ServerOptimizer",
    "Strategy",
    "registered",
]
