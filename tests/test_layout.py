"""The package's import structure: nothing inside hareid imports hareid.api (a face for users only),
and no module imports itself back through others (no import circles, lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import hareid

SRC = Path(hareid.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the hareid modules it imports (module level and inside functions)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            out |= {t for t in targets if t in modules and t != name}
        graph[name] = out
    return graph


def test_nothing_inside_imports_the_api() -> None:
    offenders = sorted(m for m, deps in _imports().items() if "hareid.api" in deps)
    assert not offenders, f"these modules import hareid.api (import from where it lives instead): {offenders}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among plain modules (a package's __init__ that only re-exports is skipped)."""
    faces = {m for m in graph if (SRC.parent / m.replace(".", "/") / "__init__.py").is_file()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m] - faces):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(set(graph) - faces):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circles() -> None:
    circle = _cycle(_imports())
    assert circle is None, "import circle: " + " -> ".join(circle or [])
