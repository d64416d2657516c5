"""``say(line)``: one whole line in one write to stdout.

Open MPI tags every chunk a rank writes with ``[1,r]<stdout>:``; ``print`` writes the text and
its newline separately when Python runs unbuffered (``PYTHONUNBUFFERED=1``), so a line could
come out as two tagged pieces and a test reading it would see ``0.17[1,1]<stdout>:``.
"""

from __future__ import annotations

import sys


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
