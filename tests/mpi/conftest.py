"""One hvd_ps runtime per MPI test session.

Horovod cannot be initialised twice in one process and ps-lite reads its environment once,
so every test of this directory shares one ``hvd_ps.init``. Its grouping comes from
``HVD_PS_TEST_GROUPS`` (JSON, e.g. ``'[[0], [1, 2, 3]]'``); by default: 1 rank ``[[0]]``,
2 ranks ``[[0, 1]]``, 4 ranks ``[[0, 1], [2, 3]]`` (pairs for other even sizes, singletons
otherwise). ``scripts/test.sh`` runs this directory once per grouping::

    HVD_PS_TEST_GROUPS='[[0],[1,2,3]]' mpirun -np 4 -x HVD_PS_TEST_GROUPS \\
        python -m pytest --with-mpi tests/mpi

A PS tier runs in one mode for a whole job: ``HVD_PS_TEST_MODE=async`` makes this session's
tier async (the ``async_client`` tests run, the ``sync_client`` ones skip); by default it is
sync, and the async tests skip.

``HVD_PS_TEST_FRAMEWORK=torch`` starts the session with the PyTorch front end
(``hvd_ps.torch.init``, torch imported first); its sessions run only the ``test_torch_*``
files, which skip in the MXNet sessions.

Every wait is bounded by ``HVD_PS_TIMEOUT`` (60 s here unless set).
"""

from __future__ import annotations

import json
import os
from typing import List

import pytest

os.environ.setdefault("HVD_PS_TIMEOUT", "60")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")


def default_shape(size: int) -> List[List[int]]:
    if size == 1:
        return [[0]]
    if size == 2:
        return [[0, 1]]
    if size % 2 == 0:
        return [[r, r + 1] for r in range(0, size, 2)]
    return [[r] for r in range(size)]


@pytest.fixture(scope="session")
def shape() -> List[List[int]]:
    """The grouping this session runs with, as given (not normalised)."""
    from mpi4py import MPI

    raw = os.environ.get("HVD_PS_TEST_GROUPS")
    return json.loads(raw) if raw else default_shape(MPI.COMM_WORLD.Get_size())


@pytest.fixture(scope="session")
def rt(shape):
    """The session's hvd_ps runtime (``hvd_ps.train.runtime.runtime()``); shut down at the end."""
    import hvd_ps
    from hvd_ps.train import runtime

    if framework() == "torch":
        import torch  # noqa: F401  (before any Horovod binding: docs/troubleshooting.md)

        import hvd_ps.torch as hps

        hps.init(groups=shape)
    else:
        hvd_ps.init(groups=shape)
    yield runtime.runtime()
    hvd_ps.shutdown()


def framework() -> str:
    """The front end this session runs (``HVD_PS_TEST_FRAMEWORK``: mxnet or torch)."""
    return os.environ.get("HVD_PS_TEST_FRAMEWORK", "mxnet")


def _tier_mode() -> str:
    return os.environ.get("HVD_PS_TEST_MODE", "sync")


def _client_in(rt, mode: str):
    if _tier_mode() != mode:
        pytest.skip(f"this session's PS tier is {_tier_mode()} (HVD_PS_TEST_MODE={mode} runs it)")
    if rt.client is not None:
        rt.client.set_mode(mode)
    return rt.client


@pytest.fixture(scope="session")
def sync_client(rt):
    """This rank's PS client with the tier in sync mode (None on non-leaders)."""
    return _client_in(rt, "sync")


@pytest.fixture(scope="session")
def async_client(rt):
    """This rank's PS client with the tier in async mode (None on non-leaders)."""
    return _client_in(rt, "async")


@pytest.fixture(scope="session")
def torch_rt(rt):
    """The session's runtime, started by the PyTorch front end (else the test skips)."""
    if framework() != "torch":
        pytest.skip("needs a session with HVD_PS_TEST_FRAMEWORK=torch (scripts/test.sh runs them)")
    return rt
