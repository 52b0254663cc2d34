"""The suite's own rules about itself. Its lists of test files (tests/conftest.py) name files
that exist: a renamed file would otherwise lose its place in the order, or its servers'
coverage, without a word. And every HTTP client it makes shares one TLS context."""

import ast
from pathlib import Path

from tests.conftest import LONGEST_FIRST, TRACED_SERVERS

TESTS = Path(__file__).resolve().parent
HTTPX_CALLS = {"Client", "AsyncClient", "get", "post", "put", "patch", "delete", "request"}


def test_the_longest_first_and_the_traced_files_exist() -> None:
    named = [*LONGEST_FIRST, *TRACED_SERVERS]
    assert [name for name in named if not (TESTS / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def _httpx_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "httpx"
        and node.func.attr in HTTPX_CALLS
    ]


def test_every_httpx_client_of_the_tests_shares_the_tls_context() -> None:
    """`verify=TLS` (tests/server.py): a client of its own costs about 40 ms of CPU."""
    calls = {
        f"{path.name}:{call.lineno}": call
        for path in TESTS.glob("*.py")
        for call in _httpx_calls(ast.parse(path.read_text()))
    }
    assert len(calls) > 50  # the scan finds them
    unshared = [
        where
        for where, call in calls.items()
        if not any(k.arg == "verify" and ast.unparse(k.value) == "TLS" for k in call.keywords)
    ]
    assert unshared == []
