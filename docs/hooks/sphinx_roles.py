"""Griffe extension: hvd_ps's docstrings, written in reStructuredText habits, read as Markdown.

The package's docstrings cross-reference with Sphinx roles (``:class:`~hvd_ps.errors.X```,
``:mod:`hvd_ps.ps.rules```) and introduce examples with ``Example::``. In the API reference
(mkdocstrings, Markdown) a role becomes inline code of the name it points at (with ``~``: the
last part only, as Sphinx shows it) and ``Example::`` followed by an indented block becomes a
heading line and a fenced Python block. The docstrings themselves stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
#: a paragraph ending in ``::`` and the indented block that follows it
LITERAL = re.compile(
    r"^(?P<indent>[ ]*)(?P<head>[^\n]*?)::[ ]*\n\n"
    r"(?P<body>(?:(?P=indent)[ ]+[^\n]*\n|[ ]*\n)+)",
    re.M,
)


def _role(m: re.Match) -> str:
    tilde, target = m.groups()
    return f"`{target.split('.')[-1] if tilde else target}`"


def _literal(m: re.Match) -> str:
    head, body = m.group("head"), m.group("body")
    lines = body.rstrip("\n").split("\n")
    width = min(len(ln) - len(ln.lstrip()) for ln in lines if ln.strip())
    code = "\n".join(ln[width:] for ln in lines)
    lead = f"{m.group('indent')}{head}:\n\n" if head.strip() else ""
    return f"{lead}```python\n{code}\n```\n\n"


def markdown(text: str) -> str:
    """``text`` with roles as inline code and ``::`` literal blocks as fenced code."""
    return LITERAL.sub(_literal, ROLE.sub(_role, text + "\n")).rstrip() + "\n"


class SphinxRoles(Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
