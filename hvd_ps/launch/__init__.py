"""``hvdps-run``: the command line (:mod:`.cli`, :mod:`.args`), the PS processes it and the
embedded tier start (:mod:`.spawn`, :mod:`.processes`) and the rendezvous with the job's
``hvd_ps.init`` (:mod:`.rendezvous`)."""

from __future__ import annotations

from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """The ``hvdps-run`` console script (``hvd_ps.launch:main``)."""
    from .cli import main as run

    return run(argv)
