"""``python -m hvd_ps.launch``: ``hvdps-run``."""

import sys

from .cli import main

sys.exit(main())
