"""``python -m hvd_ps.server``: a scheduler or server of the PS tier (:mod:`hvd_ps.ps.server`).

Kept at this name because MXNet's launch tools and users start servers with it.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("hvd_ps.ps.server", run_name="__main__", alter_sys=True)
