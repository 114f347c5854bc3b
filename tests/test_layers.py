"""The rooms' layering (docs/ARCHITECTURE.md, "Layers"): imports point down, files import in no circle.

Every project ``.py`` file is parsed with ``ast`` (nothing is imported): each ``import`` of a
project module, at module level or inside a function, is an arrow from its room (the top-level
package or command module) to the imported one. An arrow may only stay in its room or go to a room
of a lower layer of :data:`LAYERS` (rooms sharing a layer import none of each other, except the pairs
in :data:`SAME_LAYER_IMPORTS`). Separately, the module-level imports (those run when a file is
imported; not those inside functions or under ``TYPE_CHECKING``) between files form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# bottom to top: a room may import rooms of lower layers (and of its own: see SAME_LAYER_IMPORTS)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),  # atomic I/O, errors, signals, threads, logging, distributed glue, Slurm's variables
    ("datasets", "loss", "network"),  # data sources and tools, losses, models (+ checkpoints)
    ("inference",),  # the one inference configuration
    ("config",),  # the command line: flags parsed into typed dataclasses (no torch)
    ("training",),  # training-loop pieces train.py wires (fine-tuning flags, evaluation dumps)
    ("deploy",),  # shipping a trained model: ONNX, int8/fp16, slim weights, Segmenter
    ("train", "predict", "export", "hubconf"),  # the commands
    ("sbatch",),  # the launcher: runs the commands, checks their flags at submission
    ("bench",),  # benchmarks: may import anything, nothing imports them
)
# rooms of one layer that import each other's modules (train.py --eval folder runs predict.py's machinery)
SAME_LAYER_IMPORTS = {("train", "predict")}
ROOMS = frozenset(room for layer in LAYERS for room in layer)
RANK = {room: rank for rank, layer in enumerate(LAYERS) for room in layer}
SKIP = {"tests", "logs", "data", "containers", "scripts", ".git", "docs"}


def project_files() -> dict[str, Path]:
    """Module name -> file, for every project .py file outside tests/."""
    out = {}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in SKIP or rel.parts[0].startswith(".") or not (
                len(rel.parts) == 1 or (REPO / rel.parts[0] / "__init__.py").exists()):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = project_files()


def _resolve(name: str) -> str | None:
    """The longest prefix of ``name`` that is a project module (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, package: str, module_level: bool) -> Iterator[tuple[str, bool]]:
    """(imported name, at module level) for every import under ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            yield from ((alias.name, module_level) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (child.level - 1)]
                base = ".".join([*parts, *([child.module] if child.module else [])])
            yield from ((f"{base}.{alias.name}", module_level) for alias in child.names)
        else:
            inner = module_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.If) and _is_type_checking(child):
                inner = False
            yield from _imports(child, package, inner)


def arrows() -> set[tuple[str, str, bool]]:
    """(importer, imported, at module level) between project modules."""
    out = set()
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name, module_level in _imports(ast.parse(path.read_text(), str(path)), package, True):
            target = _resolve(name)
            if target and target != module:
                out.add((module, target, module_level))
    return out


ARROWS = arrows()


def room(module: str) -> str:
    return module.split(".")[0]


def test_every_file_has_a_room() -> None:
    assert {room(m) for m in MODULES} == ROOMS, "a new top-level package or command: add it to LAYERS"


def test_imports_point_down() -> None:
    upward = sorted(f"{a} -> {b}" for a, b, _ in ARROWS
                    if RANK[room(b)] > RANK[room(a)]
                    or (room(a) != room(b) and RANK[room(b)] == RANK[room(a)]
                        and (room(a), room(b)) not in SAME_LAYER_IMPORTS))
    assert not upward, "imports from a lower layer to a higher one (docs/ARCHITECTURE.md, Layers):\n" + "\n".join(
        upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for a, b, module_level in ARROWS:
        if module_level:
            edges.setdefault(a, set()).add(b)
    assert not _cycles(edges), f"module-level import cycles between files: {_cycles(edges)}"


def test_no_two_file_circles() -> None:
    """Two files that import each other, even inside a function (a lazy import hiding a cycle)."""
    pairs = {(a, b) for a, b, _ in ARROWS}
    circles = {(a, b) for a, b in pairs if a < b and (b, a) in pairs and room(a) != a}  # not a package's __init__
    assert not circles, f"two files import each other: {sorted(circles)}"


def test_the_docs_draw_the_same_layers() -> None:
    """docs/ARCHITECTURE.md's Layers table lists the rooms of LAYERS, layer by layer."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    drawn = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            drawn[int(cells[0])] = tuple(sorted(name.removesuffix("/").removesuffix(".py")
                                                for name in cells[1].replace("`", "").split(", ")))
    assert drawn == {rank: tuple(sorted(layer)) for rank, layer in enumerate(LAYERS)}
