"""The shape of the house: no import cycles between the project's modules, ml/ free of Django,
inference free of training code, pymilvus only in the vector-store adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webapp", "ml", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module imported anywhere in the file, inside functions too (those hide cycles)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_project_modules_import_each_other_without_a_cycle(graph):
    # `webapp/__init__` loads the Celery app for Django; importing `webapp.x` implies it, not a real edge.
    edges = {name: {t for t in targets if t not in PACKAGES} for name, targets in graph.items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level]
    return {name.split(".")[0] for name in names}


def test_ml_never_imports_django_or_the_webapp():
    for path in (ROOT / "ml").rglob("*.py"):
        assert not imported_packages(path) & {"django", "webapp", "rest_framework", "celery"}, path


def test_inference_never_imports_training_code(graph):
    for name, targets in graph.items():
        if name.startswith("ml.inference"):
            assert not [t for t in targets if t.startswith("ml.training")], (name, targets)


def test_only_the_vector_store_adapter_imports_pymilvus():
    """The product reaches Milvus through the adapter only. The index study is the one exception: it measures Milvus
    index types themselves (raw schemas of other dimensions, index build progress), below the adapter's level."""
    offenders = []
    for package in ("webapp", "ml", "benchmarks", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            if "pymilvus" in imported_packages(path):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert sorted(offenders) == ["benchmarks/index_study.py", "webapp/search/vector_store.py"]
