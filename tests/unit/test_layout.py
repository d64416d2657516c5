"""The package's floors: imports run downwards only, and no module imports itself back.

Read from the source with ``ast`` (nothing is imported): every ``import``/``from`` of an hvd_ps
module, at module level or inside a function, is an edge. The floors, top down:

* ``hvd_ps/train/`` (a training rank) may use ``launch``, ``ps`` and the ground;
* ``hvd_ps/launch/`` (``hvdps-run``) may use ``ps`` and the ground;
* ``hvd_ps/ps/`` (the PS tier) only the ground;
* the ground (the modules at the top of ``hvd_ps/``) no wing;

and inside ``train``, the framework-neutral ``core`` never imports a front end.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hvd_ps"
#: what each floor may import, besides itself
ALLOWED = {
    "train": {"train", "launch", "ps", "ground"},
    "launch": {"launch", "ps", "ground"},
    "ps": {"ps", "ground"},
    "ground": {"ground"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> Dict[str, Set[str]]:
    """hvd_ps module -> the hvd_ps modules it imports (a package import counts as its
    ``__init__``; ``from . import x`` as module ``x`` where it is one)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("hvd_ps"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("hvd_ps"):
                    continue
                for alias in node.names:  # `from pkg import module` imports the module
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in ALLOWED else "ground"


def test_imports_run_downwards_only() -> None:
    wrong = [
        f"{m} ({floor(m)}) imports {t} ({floor(t)})"
        for m, targets in sorted(imports().items())
        for t in sorted(targets)
        if t != "hvd_ps" and floor(t) not in ALLOWED[floor(m)]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_no_front_end() -> None:
    core = "hvd_ps.train.core"
    wrong = [
        f"{m} imports {t}"
        for m, targets in sorted(imports().items())
        if m.startswith(core)
        for t in sorted(targets)
        if t.startswith("hvd_ps.train") and not t.startswith(core) and t != "hvd_ps.train"
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    graph = imports()
    # the package root only maps public names to their modules, loaded on first use
    graph = {m: {t for t in ts if t != "hvd_ps"} for m, ts in graph.items()}
    state: Dict[str, int] = {}
    stack: List[str] = []
    circles: List[List[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_graph_is_read() -> None:
    """The reader finds the edges it must (a broken reader would pass every test above)."""
    graph = imports()
    assert "hvd_ps.ps.protocol" in graph["hvd_ps.ps.server"]
    assert "hvd_ps.train.core.schedule" in graph["hvd_ps.train.gluon"]
    assert "hvd_ps.errors" in graph["hvd_ps.config"]
    assert "hvd_ps.train.core.strategies.base" in graph["hvd_ps.train.core.strategies.diloco"]


def test_test_files_have_unique_basenames():
    """pytest collects tests/ from the root without packages: two test files of one name
    (tests/unit/x.py and tests/mpi/x.py) stop the whole collection."""
    from collections import Counter
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    assert not [n for n, c in names.items() if c > 1 and n != "conftest.py"]
