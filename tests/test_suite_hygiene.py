"""The test suite checks itself: a test that defines an inner function and never uses it asserts
nothing of what that function holds (session 11 found one whose seven asserts had never run)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _defined_in(scope: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions defined in ``scope``'s own body (inside its ifs, loops and withs), not the
    methods of a class it defines nor the functions nested in those functions."""
    found, todo = [], list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node)
        elif not isinstance(node, (ast.ClassDef, ast.Lambda)):
            todo += ast.iter_child_nodes(node)
    return found


def unused_inner_functions(source: str) -> list[str]:
    """``test_x: inner`` for each function defined inside a test and never named again in it
    (called, passed as a target or a callback); a decorated one counts as used."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")):
            continue
        inner = [f for f in _defined_in(node) if not f.decorator_list]
        named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        named |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        found += [f"{node.name}: {f.name}" for f in inner if f.name not in named]
    return found


def test_the_check_finds_an_inner_function_never_called():
    dead = "def test_a():\n    def go():\n        assert False\n"
    alive = "def test_b():\n    async def go():\n        assert True\n    asyncio.run(go())\n"
    target = "def test_c():\n    def client():\n        pass\n    Thread(target=client).start()\n"
    method = "def test_d():\n    class Fake:\n        async def ready(self):\n            return 1\n    use(Fake())\n"
    assert unused_inner_functions(dead) == ["test_a: go"] and unused_inner_functions(method) == []
    assert unused_inner_functions(alive) == [] and unused_inner_functions(target) == []


def test_no_test_defines_an_inner_function_it_never_uses():
    found = {
        str(path.relative_to(TESTS)): dead
        for path in sorted(TESTS.rglob("*.py"))
        if (dead := unused_inner_functions(path.read_text()))
    }
    assert found == {}


def test_no_test_module_imports_another():
    """Shared helpers live in helper modules (tests/cli_run.py, tests/shared_data.py,
    tests/serving/gateway_app.py, tests/serving/browser.py): session 22's landing failed because a
    test module imported a helper from another test module whose signature had changed."""
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(TESTS)}: {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert not offenders
