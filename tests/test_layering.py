"""Imports point one way: a module may import its own layer or a lower one, never a higher one, and no two
folders import each other (directly or round a longer loop).

Every ``import`` and ``from ... import`` in every module is read with ``ast`` — those inside functions too,
since a deferred import is still a dependency. Imports under ``if TYPE_CHECKING:`` are left out: they name a
higher layer's type in an annotation (a task's hook receives the trainer) and never run. The order is the one
in the README's Layout section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neuratlas"

# Lowest first. A unit is a folder of src/neuratlas, or a top-level module; units on one line are peers.
ORDER: list[set[str]] = [
    {"errors", "config", "registry", "sources", "optim", "device", "plotting", "extras"},  # base
    {"layers"},
    {"models"},
    {"text"},
    {"weights"},
    {"data"},
    {"tasks"},
    {"training"},
    {"paradigms"},
    {"recipes"},
    {"bench", "export", "tour", "visualize", "api"},
    {"cli", "__main__"},
]
RANK = {unit: i for i, units in enumerate(ORDER) for unit in units}

# (file, imported module): upward edges in code that is being removed (the GAN runner that bypasses the
# trainer, recipes that format tour rows); they are left out of the cycle check too. Empty this list as that
# code goes; an entry that no longer occurs fails the test, so the list never outlives the code.
ALLOWED: set[tuple[str, str]] = {
    ("recipes/paradigms.py", "neuratlas.tour"),  # being removed
}


def unit_of(module: str) -> str:
    """``neuratlas.models.gpt`` -> ``models``; ``neuratlas.errors`` -> ``errors``; ``neuratlas`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in ``path``; ``from neuratlas import x``
    names the submodule ``neuratlas.x`` when there is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    typing_only = {  # `if TYPE_CHECKING:` imports name types for annotations; they never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != root.name:
                continue
            if mod == root.name:  # the public API, or a submodule imported by name
                for a in node.names:
                    if (root / a.name).is_dir() or (root / f"{a.name}.py").is_file():
                        out.append((node.lineno, f"{mod}.{a.name}"))
                    elif a.name != "__version__":  # set before __init__ imports anything
                        out.append((node.lineno, mod))
            else:
                out.append((node.lineno, mod))
    return out


def edges(root: Path) -> list[tuple[str, int, str, str, str]]:
    """(file relative to the package, line, imported module, source unit, target unit) across units."""
    out = []
    for path in sorted(root.rglob("*.py")):
        src = unit_of(module_name(path, root))
        for line, mod in imports(path, root):
            dst = unit_of(mod)
            if dst != src:
                out.append((path.relative_to(root).as_posix(), line, mod, src, dst))
    return out


def problems(root: Path, order: dict[str, int], allowed: set[tuple[str, str]]) -> list[str]:
    """One line per upward edge, per unit missing from the order, per cycle between units, per stale entry."""
    found = edges(root)
    init_rank = max((order.get(dst, -1) for _, _, _, src, dst in found if src == "__init__"), default=-1)
    rank = {**order, "__init__": init_rank}  # the public API ranks as the highest layer it imports
    out, used = [], set()
    units = {unit_of(module_name(p, root)) for p in root.rglob("*.py")} - {"__init__"}
    out += [
        f"{u}: not in the layer order; add it to ORDER here and to the README's Layout"
        for u in sorted(units - set(order))
    ]
    graph: dict[str, set[str]] = {}
    for file, line, mod, src, dst in found:
        if src == "__init__":
            continue  # the public API may re-export any layer
        if (file, mod) in allowed:
            used.add((file, mod))
            continue
        graph.setdefault(src, set()).add(dst)
        if rank.get(dst, -1) > rank.get(src, len(order)):
            out.append(f"{file}:{line} imports {mod}: {src} may not import {dst} (a higher layer)")
    out += [f"{file} no longer imports {mod}: remove it from ALLOWED" for file, mod in sorted(allowed - used)]
    for cycle in cycles(graph):
        # a loop has at least one edge that does not point down: those are the ones to show
        where = [
            f"{file}:{line} imports {mod}"
            for file, line, mod, src, dst in found
            if src in cycle
            and dst in cycle
            and src != "__init__"
            and (file, mod) not in allowed
            and rank.get(dst, -1) >= rank.get(src, len(order))
        ]
        out.append(f"import cycle between {' <-> '.join(sorted(cycle))}: " + "; ".join(where))
    return out


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_point_down_the_layers():
    found = problems(PACKAGE, RANK, ALLOWED)
    assert not found, "wrong-way imports:\n" + "\n".join(found)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def toy(tmp_path):
    """A miniature package laid out like Neuratlas, which the checks must judge like the real one."""
    return write(
        tmp_path / "neuratlas",
        {
            "__init__.py": "from neuratlas.models import build\n",
            "errors.py": "",
            "layers/__init__.py": "from neuratlas.errors import *\n",
            "models/__init__.py": "from .gpt import build\n",
            "models/gpt.py": "from ..layers import x\n\ndef build():\n    from neuratlas import errors\n",
            "data/__init__.py": "import neuratlas.models.gpt\n",
        },
    )


def test_the_check_accepts_downward_imports(toy):
    assert problems(toy, RANK, set()) == []


def test_the_check_names_an_upward_import_even_inside_a_function(toy):
    write(toy, {"models/bert.py": "def load():\n    from neuratlas.data import text\n"})
    found = problems(toy, RANK, set())
    assert any(p.startswith("models/bert.py:2 imports neuratlas.data: models may not import data") for p in found)
    assert any(p.startswith("import cycle between data <-> models") for p in found)
    assert problems(toy, RANK, {("models/bert.py", "neuratlas.data")}) == []


def test_the_check_finds_a_cycle_between_peers(toy):
    write(toy, {"bench/__init__.py": "from neuratlas.tour import row\n", "tour.py": "import neuratlas.bench\n"})
    assert problems(toy, RANK, set()) == [
        "import cycle between bench <-> tour: bench/__init__.py:1 imports neuratlas.tour; "
        "tour.py:1 imports neuratlas.bench"
    ]


def test_the_check_resolves_relative_and_package_imports(toy):
    write(toy, {"layers/norms.py": "from ..models import gpt\n", "text/__init__.py": "from neuratlas import data\n"})
    found = problems(toy, RANK, set())
    assert any(p.startswith("layers/norms.py:1 imports neuratlas.models:") for p in found)
    assert any(p.startswith("text/__init__.py:1 imports neuratlas.data:") for p in found)


def test_the_check_skips_annotation_only_imports(toy):
    write(
        toy,
        {
            "layers/hooks.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
            "    from neuratlas.data import Batch\nelse:\n    import neuratlas.data\n"
        },
    )
    found = problems(toy, RANK, set())
    assert [p for p in found if "may not" in p] == [
        "layers/hooks.py:6 imports neuratlas.data: layers may not import data (a higher layer)"
    ]


def test_the_check_refuses_unknown_units_and_stale_allowances(toy):
    write(toy, {"gadgets/__init__.py": ""})
    found = problems(toy, RANK, {("tasks/gan.py", "neuratlas.tour")})
    assert "gadgets: not in the layer order; add it to ORDER here and to the README's Layout" in found
    assert "tasks/gan.py no longer imports neuratlas.tour: remove it from ALLOWED" in found
