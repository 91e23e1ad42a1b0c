"""The layering of DESIGN.md §2, read from the source: the library does not depend on its
built-in nodes, and the spec module depends on nothing that depends on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "areal_flow"
NODES = PACKAGE / "nodes"  # the link to the top-level nodes/ folder


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def library_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if NODES in path.parents or path.parent == NODES:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def test_the_library_imports_no_built_in_node_except_the_registry() -> None:
    offenders = {
        name: sorted(i for i in imports(path) if i.startswith("areal_flow.nodes") or i == "nodes")
        for name, path in library_modules().items()
        if name != "areal_flow.registry"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    registry = imports(PACKAGE / "registry.py")
    assert "areal_flow.nodes" in registry  # the one lazy load of the built-ins


def test_spec_imports_nothing_that_imports_it_back() -> None:
    modules = library_modules()
    spec_imports = {i for i in imports(PACKAGE / "spec.py") if i.startswith("areal_flow")}
    for name in spec_imports:
        module = next((m for m in modules if name == m or name.startswith(m + ".")), None)
        assert module is None or "areal_flow.spec" not in {
            i.rsplit(".", 1)[0] if i.startswith("areal_flow.spec.") else i
            for i in imports(modules[module])
        }, f"spec.py imports {name}, which imports spec back"
    assert spec_imports == set(), f"spec.py imports {sorted(spec_imports)}"


def test_no_top_level_nodes_package_is_installed() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["areal_flow*"]
    assert (PACKAGE / "nodes").is_symlink() and (PACKAGE / "nodes").resolve() == ROOT / "nodes"


def test_nothing_imports_the_bare_nodes_folder() -> None:
    """From the repository root ``import nodes`` would load the built-ins a second time, as
    other classes (kinds would then clash): code imports them as ``areal_flow.nodes``."""
    offenders = {}
    for folder in ("areal_flow", "tests", "graphs", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bare = {i for i in imports(path) if i == "nodes" or i.startswith("nodes.")}
            if bare:
                offenders[str(path.relative_to(ROOT))] = sorted(bare)
    assert offenders == {}
