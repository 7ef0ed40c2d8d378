"""The house rules of `src/tuneship/`, read from the import statements: no private names taken
from another package, no import cycles, and no stage importing another stage's package."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
SRC = Path(__file__).resolve().parents[2] / "src"
STAGE_PACKAGES = ("data", "train", "evaluation", "registry")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, names, at top level) for each `tuneship` import of a file."""
    found = []
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuneship"):
            found.append((node.module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], id(node) in top) for a in node.names
                      if a.name.startswith("tuneship")]
    return found


MODULES = {module_name(p): p for p in SRC.joinpath("tuneship").rglob("*.py")}


def test_no_private_name_is_imported_from_another_package():
    offenders = [f"{name}: {module}.{n}" for name, path in MODULES.items()
                 for module, names, _ in imports(path) for n in names
                 if n.startswith("_") and module.rsplit(".", 1)[0] != name.rsplit(".", 1)[0]]
    assert not offenders


def test_top_level_imports_have_no_cycle():
    graph = {name: {m for m, names, top in imports(path) if top for m in
                    [m, *(f"{m}.{n}" for n in names)] if m in MODULES and m != name}
             for name, path in MODULES.items()}
    done, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(node):], node])}")
        if node in done:
            return
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.pop()
        done.add(node)

    for name in graph:
        visit(name)


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_a_stage_imports_nothing_from_another_stage_package(package):
    others = tuple(f"tuneship.{p}" for p in STAGE_PACKAGES if p != package)
    stage_files = [p for p in (SRC / "tuneship" / package).glob("*.py")]
    offenders = [f"{p.name}: {module}" for p in stage_files for module, _, _ in imports(p)
                 if module.startswith(others)]
    assert not offenders
