"""A filter compiled once into a Python predicate over `(mac, content)`, and `fields`.

Each operator becomes a closure chosen for its value's type when the filter is compiled, so
evaluating one document is a few dict lookups and comparisons, never a walk over the nodes.
The rules (types, missing properties, arrays) are in docs/API.md ("Searching the fleet");
`quart_iot/rql/sql.py` gives PostgreSQL the same ones, and tests/test_rql_sql.py checks that
the two select the same devices.
"""

import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

from quart_iot.documents import Document
from quart_iot.rql.nodes import (
    Compare,
    Exists,
    Glob,
    In,
    Junction,
    Like,
    Node,
    Not,
    Property,
    Scalar,
    Wildcard,
)

Predicate = Callable[[str, Document], bool]
Getter = Callable[[str, Document], Any]
Test = Callable[[Any], bool]

MISSING: Any = type("Missing", (), {"__repr__": lambda _: "MISSING"})()
"""What a getter returns for a property the document does not have (JSON null is None)."""

_ORDER = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
_INDEX = re.compile(r"0|[1-9][0-9]*")  # an array index as JSON Pointer writes one


def compile_filter(node: Node) -> Predicate:
    """The predicate of a parsed filter: true for the devices the filter selects."""
    if isinstance(node, Junction):
        return _junction(node)
    if isinstance(node, Not):
        inner = compile_filter(node.term)
        return lambda mac, content: not inner(mac, content)
    return _atom(node.prop, _test(node))


def _junction(node: Junction) -> Predicate:
    terms = tuple(compile_filter(term) for term in node.terms)
    if len(terms) == 1:
        return terms[0]
    if len(terms) == 2:  # the common case, without a generator
        first, second = terms
        if node.op == "and":
            return lambda mac, content: first(mac, content) and second(mac, content)
        return lambda mac, content: first(mac, content) or second(mac, content)
    if node.op == "and":
        return lambda mac, content: all(term(mac, content) for term in terms)
    return lambda mac, content: any(term(mac, content) for term in terms)


def _atom(prop: Property, test: Test) -> Predicate:
    if prop.is_mac:
        return lambda mac, _content: test(mac)
    if len(prop.segments) == 1:  # most filters: one call fewer per document
        key = prop.segments[0]
        return lambda _mac, content: test(content.get(key, MISSING))
    get = path_getter(prop.segments)
    return lambda _mac, content: test(get(content))


def getter(prop: Property) -> Getter:
    """Reads a property: the MAC, or the value at a path in the content (else MISSING)."""
    if prop.is_mac:
        return lambda mac, _content: mac
    get = path_getter(prop.segments)
    return lambda _mac, content: get(content)


def path_getter(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    """The value at a path: a key of an object, or a decimal index of an array (JSON Pointer's
    rule: 0 or no leading zero); MISSING where the path leads nowhere."""
    steps = tuple((key, int(key) if _INDEX.fullmatch(key) else None) for key in keys)
    if len(keys) == 2 and steps[0][1] is None and steps[1][1] is None:
        first, second = keys  # `mqtt/host`: the common shape, unrolled

        def get(content: Any) -> Any:
            value = content.get(first)
            return value.get(second, MISSING) if type(value) is dict else MISSING

        return get
    return lambda content: _walk(content, steps)


def _walk(value: Any, steps: tuple[tuple[str, int | None], ...]) -> Any:
    for key, index in steps:
        if type(value) is dict:
            value = value.get(key, MISSING)
        elif type(value) is list and index is not None and index < len(value):
            value = value[index]
        else:
            return MISSING
    return value


# -- tests of one value ------------------------------------------------------------------------


def _test(node: Compare | In | Like | Exists) -> Test:
    if isinstance(node, Exists):
        return lambda value: value is not MISSING
    if isinstance(node, In):
        return _one_of(node.values)
    if isinstance(node, Like):
        return _like(node.pattern)
    if node.op == "eq":
        return _equals(node.value)
    if node.op == "ne":
        equals = _equals(node.value)
        return lambda value: not equals(value)
    return _ordered(_ORDER[node.op], node.value)


def _equals(literal: Scalar) -> Test:
    """JSON equality: types must agree (true is not 1), but 1 equals 1.0, as in jsonb."""
    if literal is None or isinstance(literal, bool):
        return lambda value: value is literal
    if isinstance(literal, str):
        return lambda value: value == literal  # only a str equals a str
    return lambda value: value == literal and type(value) is not bool


def _ordered(compare: Callable[[Any, Any], bool], literal: Scalar) -> Test:
    """Numbers with numbers, strings with strings (by code point); any other pair is false."""
    if isinstance(literal, str):
        return lambda value: type(value) is str and compare(value, literal)
    return lambda value: (type(value) is int or type(value) is float) and compare(value, literal)


def _one_of(literals: tuple[Scalar, ...]) -> Test:
    """`in`: equal to one of the values, by `_equals`'s rules (one set per JSON type)."""
    numbers = frozenset(v for v in literals if type(v) is int or type(v) is float)
    by_type: dict[type, frozenset[Any]] = {
        str: frozenset(v for v in literals if type(v) is str),
        bool: frozenset(v for v in literals if type(v) is bool),
        int: numbers,
        float: numbers,  # 1 in {1.0}: one number, as in jsonb
    }
    null = None in literals

    def test(value: Any) -> bool:
        if value is None:
            return null
        found = by_type.get(type(value))
        return found is not None and value in found

    return test


# -- like --------------------------------------------------------------------------------------


class _Segment:
    """A run of a like pattern between two `*`: literal characters and `?`, a fixed length."""

    def __init__(self, parts: list[str | Wildcard]) -> None:
        self.length = sum(len(part) if isinstance(part, str) else 1 for part in parts)
        literal = not any(part is Wildcard.ONE for part in parts)
        self.text = "".join(part for part in parts if isinstance(part, str)) if literal else None
        self.regex = re.compile(
            "".join("." if part is Wildcard.ONE else re.escape(str(part)) for part in parts),
            re.DOTALL,
        )

    def at(self, value: str, start: int) -> bool:
        if self.text is not None:
            return value.startswith(self.text, start)
        return self.regex.match(value, start) is not None

    def find(self, value: str, start: int, end: int) -> int:
        if self.text is not None:
            return value.find(self.text, start, end)
        found = self.regex.search(value, start, end)
        return found.start() if found else -1


def _like(pattern: Glob) -> Test:
    """A test of the whole string against the pattern, linear in its length for any pattern
    (a regex of `.*` runs would backtrack: `*a*a*a*b` against a long run of `a` is cubic)."""
    match = _glob_matcher(pattern)
    return lambda value: type(value) is str and match(value)


def _glob_matcher(pattern: Glob) -> Callable[[str], bool]:
    runs: list[list[str | Wildcard]] = [[]]
    for part in pattern.parts:
        if part is Wildcard.ANY:
            runs.append([])
        else:
            runs[-1].append(part)
    if len(runs) == 1:
        only = _Segment(runs[0])
        return lambda value: len(value) == only.length and only.at(value, 0)
    first, *middle, last = (_Segment(run) for run in runs)
    return lambda value: _glob_match(value, first, middle, last)


def _glob_match(value: str, first: _Segment, middle: list[_Segment], last: _Segment) -> bool:
    """Anchored first and last runs; each middle run at its leftmost place after the one
    before (the leftmost place leaves the most room for the rest, so it is never wrong)."""
    end = len(value) - last.length
    if end < first.length or not first.at(value, 0) or not last.at(value, end):
        return False
    start = first.length
    for run in middle:
        found = run.find(value, start, end)
        if found < 0:
            return False
        start = found + run.length
    return True


# -- fields ------------------------------------------------------------------------------------


def field_getter(fields: Iterable[Property]) -> Callable[[str, Document], dict[str, Any]]:
    """`fields=`: each property's value by its text as asked, null when the device lacks it."""
    getters = [(prop.text, getter(prop)) for prop in fields]

    def extract(mac: str, content: Document) -> dict[str, Any]:
        values = ((text, get(mac, content)) for text, get in getters)
        return {text: None if value is MISSING else value for text, value in values}

    return extract
