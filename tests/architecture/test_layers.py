"""The house's shape, checked: layers import only downwards, siblings stay independent, no import
cycles, no function longer than a screen. Imports inside functions, and those under
`if TYPE_CHECKING:`, count as much as top-level ones: a lazy import is still a dependency, and
an annotation-only import still ties two modules together for a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Lowest first. A package may import its own modules and any package of a lower layer; packages
# on one layer are siblings and never import each other.
LAYERS: list[set[str]] = [
    {"core"},
    {"data", "models", "tflite", "firmware", "team", "field"},
    {"training", "export", "evaluation", "deploy", "monitor"},
    {"stages", "orchestration"},
    {"bench", "flows"},
    {"cli"},
]
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for root in ("pipeline", "flows"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str) -> set[str]:
    """Project modules imported anywhere in the file (a `from pkg import module` resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    known = _modules()
    return {m for m in out if m in known and m != name}


def _unit(module: str) -> str:
    """pipeline.core.config → core; pipeline.cli → cli; flows.retrain → flows."""
    parts = module.split(".")
    return "flows" if parts[0] == "flows" else (parts[1] if len(parts) > 1 else "pipeline")


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{unit} is in no layer of {LAYERS}: place it")


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path, name) for name, path in _modules().items()}


def test_every_package_has_a_layer() -> None:
    for name in _modules():
        if name not in ("pipeline", "flows"):
            _layer(_unit(name))


def test_no_module_imports_a_higher_layer_or_a_sibling() -> None:
    wrong = []
    for name, deps in _graph().items():
        if name in ("pipeline", "flows"):
            continue
        here = _unit(name)
        for dep in deps:
            there = _unit(dep)
            if there != here and _layer(there) >= _layer(here):
                wrong.append(f"{name} imports {dep} ({here} → {there})")
    assert not wrong, "\n".join(sorted(wrong))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("root", ["pipeline", "flows"])
def test_no_function_over_60_lines(root: str) -> None:
    long = []
    for path in sorted((REPO / root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines}")
    assert not long, "\n".join(long)


def test_the_map_names_every_module_where_it_lives() -> None:
    """docs/architecture.md's map of the house matches `ls pipeline/*/`."""
    readme = (REPO / "docs/architecture.md").read_text()
    rows = {
        line.split("|")[2].strip().strip("`"): line
        for line in readme.splitlines()
        if line.startswith("| ") and line.count("|") >= 4 and "`pipeline/" in line.split("|")[2]
    }
    for folder in sorted(p for p in (REPO / "pipeline").iterdir() if (p / "__init__.py").is_file()):
        row = rows.get(f"pipeline/{folder.name}/")
        assert row, f"pipeline/{folder.name}/ has no row in docs/architecture.md's map"
        for module in sorted(folder.glob("*.py")):
            if module.name != "__init__.py":
                assert f"`{module.name}`" in row, (
                    f"{module.name} missing from pipeline/{folder.name}/"
                )
