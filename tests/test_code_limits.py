"""House rules that keep the package readable: no module over 400 lines, no function with more than 8 parameters
(click commands excepted: each option is a parameter), and one out-of-memory halving recursion."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

PACKAGE = ROOT / "esrgan_cli"


def _modules() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))]


def test_no_module_over_400_lines() -> None:
    long = {name: text.count("\n") for name, text in _modules() if text.count("\n") > 400}
    assert not long, long


def test_no_function_over_8_parameters_outside_click_commands() -> None:
    found = []
    for name, text in _modules():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            if a.args and a.args[0].arg in ("self", "cls"):
                count -= 1
            click = any(re.search(r"\b(command|option|argument|pass_context)\b", ast.unparse(d))
                        for d in node.decorator_list)
            if count > 8 and not click:
                found.append(f"{name}:{node.lineno} {node.name} ({count})")
    assert not found, found


def test_one_halving_recursion() -> None:
    """Only tiling.run_blocks splits a block that ran out of memory."""
    halving = [name for name, text in _modules() if re.search(r"//\s*2\b", text) and "TileTooLarge" in text
               and re.search(r"except\s+TileTooLarge", text)]
    assert halving == ["esrgan_cli/upscale/_tiling.py"], halving
