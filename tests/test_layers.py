"""The package's layers, read from the source: no import circle anywhere in edgecc, and each room of
the runtime imports only the rooms below it (docs/architecture.md, "Layers").

Every import counts, including those inside functions (imported on use): a lazy import is still a
dependency, it is only paid for later.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgecc"

# room -> the other rooms of edgecc it may import (a room is a top-level module or package)
ALLOWED = {
    "edgecc.errors": set(),
    "edgecc.coding": {"edgecc.errors"},
    "edgecc.protocol": {"edgecc.errors"},
    "edgecc.comm": {"edgecc.errors", "edgecc.protocol"},
    # the worker knows compute specs and arrays, never a scheme or the master
    "edgecc.worker": {"edgecc.errors", "edgecc.protocol", "edgecc.comm", "edgecc.blas", "edgecc.process",
                      "edgecc.bundle", "edgecc.coding", "edgecc.data", "edgecc.datasets", "edgecc.nets"},
    # image sources read files in known formats; numpy (and Pillow on use) only
    "edgecc.datasets": {"edgecc.errors", "edgecc.protocol", "edgecc.data"},
    # the master knows plans only through the registry's configure_message; never a worker's internals
    "edgecc.master": {"edgecc.errors", "edgecc.protocol", "edgecc.comm", "edgecc.blas", "edgecc.process",
                      "edgecc.schemes"},
    # a scheme's plan is the master's side with no I/O: it may name worker compute kinds, not sockets
    # (datasets: AICC calibrates a model of another image shape on the shipped sample converted to it)
    "edgecc.schemes": {"edgecc.errors", "edgecc.protocol", "edgecc.coding", "edgecc.nets", "edgecc.worker",
                       "edgecc.bundle", "edgecc.export", "edgecc.modelfile", "edgecc.data", "edgecc.datasets"},
    "edgecc.launch": {"edgecc.errors", "edgecc.comm", "edgecc.worker"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The edgecc modules `name` imports (a package when what is imported from it is not a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in mods else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in mods and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_edgecc_takes_part_in_an_import_circle():
    assert _cycles(_graph()) == []


def test_each_room_of_the_runtime_imports_only_the_rooms_below_it():
    wrong = sorted(f"{m} imports {t}" for m, targets in _graph().items() if _room(m) in ALLOWED
                   for t in targets if _room(t) != _room(m) and _room(t) not in ALLOWED[_room(m)])
    assert wrong == []


def test_the_link_knows_nothing_of_the_master():
    graph = _graph()
    assert not {t for t in graph["edgecc.master.link"] if t.startswith("edgecc.master.master")}
    assert "edgecc.schemes" not in {_room(t) for t in graph["edgecc.master.link"]}


# Ray is an optional extra (edgecc[ray]) for workers as Ray actors and the service on Ray Serve: only the
# ray:// transport, its launcher and serve/ray_app import it, so the torch-free TCP worker and the master
# over TCP never load it.
IMPORTS_RAY = {"edgecc.comm.ray", "edgecc.launch.ray_workers", "edgecc.serve.ray_app"}


def test_only_the_ray_transport_and_launcher_import_ray():
    found = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.add(name)
    assert found == IMPORTS_RAY
