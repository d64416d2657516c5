"""Makes the shared helpers importable from every test folder.

``tests/`` holds the harness modules (``job_run``: running a whole job bounded and reaping what
it leaves; ``reference``: the numpy references of the strategies); the repository root holds
``benchmarks``. Both go on ``sys.path`` here, so ``tests/unit``, ``tests/jobs``, ``tests/bench``
and ``tests/mpi`` (and the tests left in ``tests/`` itself) import them by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for path in (TESTS, TESTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
