"""MkDocs hook: ``::: hvd_ps.NAME`` in a page becomes ``::: hvd_ps.<module>.NAME``.

``import hvd_ps`` loads its public names lazily, from the map ``_PUBLIC`` in
``hvd_ps/__init__.py`` (name -> the module that defines it), so a static reader such as
mkdocstrings cannot follow ``hvd_ps.DistributedTrainer`` by itself. This hook reads that map
(with ``ast``: nothing is imported) and rewrites each such line to the defining module, so the
API reference always documents what ``hvd_ps.NAME`` really is, wherever the module lives.
A name the map does not hold fails the build, naming it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^::: hvd_ps\.(\w+)$", flags=re.M)


def public_names() -> Dict[str, str]:
    """``_PUBLIC`` of hvd_ps/__init__.py: public name -> module (relative to hvd_ps)."""
    tree = ast.parse((ROOT / "hvd_ps" / "__init__.py").read_text())
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "_PUBLIC":
            return ast.literal_eval(node.value)
    raise RuntimeError("hvd_ps/__init__.py has no _PUBLIC map of its public names")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if not LINE.search(markdown):
        return markdown
    names = public_names()

    def resolve(m: re.Match) -> str:
        name = m.group(1)
        if name not in names:
            # a module of the package (e.g. hvd_ps.config) is left as it is
            if (ROOT / "hvd_ps" / f"{name}.py").exists() or (ROOT / "hvd_ps" / name).is_dir():
                return m.group(0)
            raise RuntimeError(
                f"{page.file.src_path}: hvd_ps.{name} is not a public name of hvd_ps "
                "(_PUBLIC in hvd_ps/__init__.py)"
            )
        return f"::: hvd_ps.{names[name]}.{name}"

    return LINE.sub(resolve, markdown)
