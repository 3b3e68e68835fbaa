"""The import structure: no circle among tasksift's modules, no private name imported across
modules, Ray imported by the executor module only."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tasksift"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """(imported module, names) for every import in the file, function-level ones included."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for mod, names in _imports(p):
            targets = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in modules] or ([mod] if mod in modules else [])
            graph[m].update(t for t in targets if t != m)
    return graph


def _is_package_of(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ re-exporting its own submodules is not a circle
    graph = {m: {t for t in ts if not _is_package_of(m, t) and not _is_package_of(t, m)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            circle = visit(m)
            assert circle is None, " -> ".join(circle)


def test_no_private_name_imported_across_modules():
    bad = []
    for p in SRC.rglob("*.py"):
        for mod, names in _imports(p):
            if mod.startswith("tasksift"):
                bad += [f"{_module_name(p)}: {mod}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, bad


def test_circle_check_finds_a_circle(tmp_path):
    global SRC
    old = SRC
    SRC = tmp_path / "tasksift"
    try:
        (SRC / "a").mkdir(parents=True)
        (SRC / "__init__.py").write_text("")
        (SRC / "a" / "__init__.py").write_text("")
        (SRC / "a" / "x.py").write_text("from .y import f\n")
        (SRC / "a" / "y.py").write_text("def f():\n    from tasksift.a.x import g\n")
        try:
            test_no_import_circle()
        except AssertionError as e:
            assert "tasksift.a.x" in str(e) and "tasksift.a.y" in str(e)
        else:
            raise AssertionError("the circle x -> y -> x was not found")
    finally:
        SRC = old
