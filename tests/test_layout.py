"""The package's layout holds: imports run only downward (README: Layout) and functions stay short."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "platform" / "hepray"

# Lowest first. A module may import its own package and the packages of lower layers only.
LAYERS = [
    {"expr", "models", "samples", "monitoring"},  # leaves: no other hepray package
    {"inputs"},
    {"spec"},
    {"data"},
    {"train"},
    {"evaluate"},
    {"app", "cluster"},
    {"tune"},
    {"cli"},
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
LONGEST_FUNCTION = 60  # lines of body: a parameter list the formatter puts one per line is not a long function


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts[0]


def hepray_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "hepray" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_package_has_a_layer():
    packages = {package for _, package in modules() if package != "__init__"}
    assert packages == set(RANK), f"add new packages to LAYERS (and the README's Layout): {packages ^ set(RANK)}"


def test_imports_run_only_downward():
    upward = []
    for path, package in modules():
        if package == "__init__":
            continue
        for line, imported in hepray_imports(ast.parse(path.read_text())):
            if imported != package and RANK[imported] >= RANK[package]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports hepray.{imported}")
    assert not upward, "\n".join(upward)


def test_functions_are_short():
    long = []
    for path, _ in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.body[0].lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
