"""The layout's rules (ARCHITECTURE.md): no import circles between esrgan_cli's modules, counting imports inside
functions and the lazy names `esrgan_cli/__init__.py` resolves by string; only `cli/` uses click or rich."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "esrgan_cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every esrgan_cli module `path` imports, at any depth of the code (a function's body too), and every
    module named by a string constant (importlib's lazy imports). `from pkg import name` counts `pkg.name`
    when that is a module, else `pkg`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def nearest(dotted: str) -> None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                nearest(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            nearest(module)
            for alias in node.names:
                if f"{module}.{alias.name}" in modules:
                    nearest(f"{module}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            nearest(node.value)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    names = set(paths)
    return {name: _imports(path, name, names) for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_circle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_imports_inside_functions(tmp_path: Path) -> None:
    source = "def f():\n    from esrgan_cli.upscale import engine\n    import esrgan_cli.files\n"
    (tmp_path / "m.py").write_text(source)
    modules = {"esrgan_cli.upscale", "esrgan_cli.upscale.engine", "esrgan_cli.files"}
    found = _imports(tmp_path / "m.py", "esrgan_cli.m", modules)
    assert found == {"esrgan_cli.upscale", "esrgan_cli.upscale.engine", "esrgan_cli.files"}


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert "esrgan_cli.upscale.engine" in graph["esrgan_cli.upscale.upscaler"]
    assert circles(graph) == []


def test_only_the_command_line_uses_click_or_rich() -> None:
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name.startswith("esrgan_cli.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] in ("click", "rich") for m in modules):
                users.append(name)
    assert users == []


def test_private_modules_are_imported_only_from_their_own_folder() -> None:
    """A module or folder whose name starts with `_` is an internal of the folder that holds it."""
    graph = import_graph()
    wrong = []
    for importer, imported in graph.items():
        for target in imported:
            parts = target.split(".")
            for depth, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:depth])
                    if not (importer == owner or importer.startswith(owner + ".")):
                        wrong.append(f"{importer} → {target}")
    assert wrong == []


def test_format_takes_every_format_an_output_file_does() -> None:
    """`--format` and `-o FILE` agree: one name per format the encoder writes, and the README lists them all."""
    from esrgan_cli.defaults import FORMAT_SUFFIXES, FORMATS

    assert {FORMATS[s] for s in FORMAT_SUFFIXES.values()} == set(FORMATS.values())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--format " + "|".join(FORMAT_SUFFIXES) in readme
