"""The package's shape: layers as folders, imports pointing down only, every import at the top of its file, no
module using another's underscored names, and no name meaning two things."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mechlab"
# bottom to top; a module may import its own layer and the layers below it
LAYERS = ["core", "data", "models", "methods", "backends", "cot", "plot", "checks", "course"]
RANK = {name: i for i, name in enumerate(LAYERS)}
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _mechlab_imports(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechlab"):
            yield node, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mechlab"):
                    yield node, alias.name, []


def test_no_module_level_files_but_init():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py"], f"modules outside a layer folder: {top}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS), folders


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__init__.py" or p.parent != PACKAGE],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_only(path):
    own = _layer(path)
    for node, module, names in _mechlab_imports(_tree(path)):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else (names[0] if names else "")
        assert target in RANK, f"{path.name}:{node.lineno} imports {module} (not a layer)"
        assert RANK[target] <= RANK[own], (f"{path.relative_to(PACKAGE)}:{node.lineno} imports mechlab.{target} "
                                           f"from the lower layer {own}")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_at_the_top(path):
    tree = _tree(path)
    top_level = {id(n) for n in tree.body}
    top_level |= {id(n) for t in tree.body if isinstance(t, ast.Try) for n in t.body}  # optional imports
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            assert id(node) in top_level, f"{path.relative_to(PACKAGE)}:{node.lineno}: import inside a block"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_underscored_names_from_other_modules(path):
    for node, _, names in _mechlab_imports(_tree(path)):
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{path.relative_to(PACKAGE)}:{node.lineno} imports {private}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_underscored_attributes_of_other_modules(path):
    """``from mechlab.core import loading`` then ``loading._helper(...)`` reaches into another module too."""
    tree = _tree(path)
    modules = set()  # local names bound to a mechlab module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechlab"):
            for alias in node.names:
                if (PACKAGE.parent / node.module.replace(".", "/") / f"{alias.name}.py").exists() or \
                        (PACKAGE.parent / node.module.replace(".", "/") / alias.name / "__init__.py").exists():
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mechlab") and alias.asname:
                    modules.add(alias.asname)
    reached = [f"{node.value.id}.{node.attr} (line {node.lineno})" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
               and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not reached, f"{path.relative_to(PACKAGE)} uses another module's underscored names: {reached}"


def test_no_public_name_defined_twice():
    """One name, one meaning: a public function, class or constant is defined in one module only."""
    where: dict[str, list[str]] = {}
    for path in MODULES:
        for node in _tree(path).body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
            for name in names:
                if not name.startswith("_") and name not in ("main", "__all__"):
                    where.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    twice = {k: v for k, v in where.items() if len(v) > 1}
    assert not twice, f"defined in more than one module: {twice}"
