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


#: The house from the ground up: a module may import its own floor or lower ones, never higher.
FLOORS = [
    {"errors"},
    {"fileio", "progress", "runtime", "distributed", "checkpoint"},
    {"data"},
    {"models"},  # layers -> networks -> their inference forms, loading
    {"config"},
    {"evaluate"},
    {"engine", "deploy"},
    {"analysis", "index"},
    {"footage"},
    {"serve"},
    {"api", "cli", "__main__"},
]


def _floor(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((i for i, f in enumerate(FLOORS) if part in f), None)


def test_every_module_stands_on_a_floor() -> None:
    homeless = sorted(m for m in _imports() if "." in m and _floor(m) is None and m != "hareid._moved")
    assert not homeless, f"place these in FLOORS (and in docs/architecture.md): {homeless}"


def test_no_module_reaches_up() -> None:
    up = sorted(f"{m} -> {d}" for m, deps in _imports().items() for d in deps
                if _floor(m) is not None and _floor(d) is not None and _floor(d) > _floor(m))
    assert not up, "imports that reach a higher floor: " + "; ".join(up)


def test_top_level_holds_only_the_commons() -> None:
    """Kinds live in packages (models, deploy, analysis...): the top level keeps the few shared modules."""
    top = sorted(p.stem for p in SRC.glob("*.py"))
    assert top == ["__init__", "__main__", "_moved", "api", "checkpoint", "cli", "config", "distributed",
                   "errors", "fileio", "progress", "runtime"]


def test_moved_modules_keep_their_old_import_path() -> None:
    import importlib
    import sys
    import warnings

    from hareid._moved import MOVED

    for old, new in MOVED.items():
        assert not (SRC.parent / (old.replace(".", "/") + ".py")).exists(), f"{old}: a file still stands there"
        sys.modules.pop(old, None)  # an earlier test may have imported it already
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = importlib.import_module(old)
        assert mod is importlib.import_module(new), old
        assert mod.__spec__.name == new  # the module keeps its own spec
        assert [str(w.message).split(";")[0] for w in caught] == [f"{old} moved to {new}"]


def test_lazy_top_level_names() -> None:
    import subprocess
    import sys

    code = ("import sys, hareid; assert 'torch' not in sys.modules; "
            "from hareid import Embedder, Trainer, build_model, load_config, load_model; "
            "from hareid.deploy.embedder import Embedder as E; assert Embedder is E; "
            "print(Trainer.__module__, build_model.__module__, load_config.__module__, load_model.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["hareid.engine.trainer", "hareid.models.registry", "hareid.config", "hareid.models.loading"]
