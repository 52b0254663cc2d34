"""The suite's own lists of test files (tests/conftest.py) name files that exist: a renamed
file would otherwise lose its place in the order, or its servers' coverage, without a word."""

from pathlib import Path

from tests.conftest import LONGEST_FIRST, TRACED_SERVERS

TESTS = Path(__file__).resolve().parent


def test_the_longest_first_and_the_traced_files_exist() -> None:
    named = [*LONGEST_FIRST, *TRACED_SERVERS]
    assert [name for name in named if not (TESTS / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
