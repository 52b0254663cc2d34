"""The RQL parser: filter text to nodes, bounded in size, every error at its position.

Positions count characters (code points) of the filter from 0. The grammar and the decisions
beyond Ditto's documentation are in docs/API.md ("Searching the fleet").
"""

import json
import math
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from quart_iot.documents import MAX_INT_DIGITS
from quart_iot.errors import InvalidFields, InvalidFilter
from quart_iot.rql.nodes import (
    Compare,
    Comparison,
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

# Bounds that make any filter cheap to parse, compile and evaluate. A real one is a few
# hundred characters, nested two or three deep, with a handful of operators; `in` over 200
# MACs still fits. Evaluation costs about an operator's call per device (an `in` looks its
# value up in a set): 64 operators over 20,000 devices is a few hundred milliseconds of CPU.
MAX_LENGTH = 4096
MAX_DEPTH = 32
MAX_OPERATORS = 64
MAX_VALUES = 256  # of all the `in` operators together
MAX_FIELDS = 32
MAX_FIELDS_LENGTH = 1024

_OPERATOR = re.compile(r"[A-Za-z_]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_INTEGER = re.compile(r"-?[0-9]+")
_WORD = re.compile(r"[A-Za-z0-9_.+-]+")  # a value that is not a string, up to what ends it
_SEGMENT = re.compile(r'[^(),"/\s\x00-\x1f\x7f]+')
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_POINTER_ESCAPE = re.compile(r"~(.?)", re.DOTALL)
_LITERALS: dict[str, Scalar] = {"true": True, "false": False, "null": None}

_COMPARISONS: dict[str, Comparison] = {
    "eq": "eq", "ne": "ne", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le"
}  # fmt: skip
_ORDERED = ("gt", "ge", "lt", "le")
OPERATORS = ("and", "or", "not", *_COMPARISONS, "in", "like", "exists")


def parse_filter(text: str) -> Node:
    """The filter's nodes, or InvalidFilter naming the first error's position."""
    return _Parser(text, InvalidFilter).filter()


def parse_fields(text: str) -> tuple[Property, ...]:
    """The properties of a `fields` list (comma-separated, duplicates dropped), or
    InvalidFields naming the first error's position."""
    return _Parser(text, InvalidFields).fields()


class _Parser:
    """A recursive descent over the text; `pos` is the next character to read."""

    def __init__(self, text: str, error: type[InvalidFilter]) -> None:
        self.text = text
        self.pos = 0
        self.error = error
        self.operators = 0
        self.values = 0

    def fail(self, problem: str, position: int | None = None) -> NoReturn:
        raise self.error(problem, self.text, self.pos if position is None else position)

    # -- the two entry points ----------------------------------------------------------------

    def filter(self) -> Node:
        if len(self.text) > MAX_LENGTH:
            self.fail(f"a filter is at most {MAX_LENGTH} characters long", MAX_LENGTH)
        self.skip_space()
        if self.pos == len(self.text):
            self.fail('the filter is empty; write an operator such as eq(deviceModel,"x")')
        node = self.term(1)
        self.skip_space()
        if self.pos < len(self.text):
            self.fail("unexpected text after the end of the filter")
        return node

    def fields(self) -> tuple[Property, ...]:
        if len(self.text) > MAX_FIELDS_LENGTH:
            self.fail(f"a fields list is at most {MAX_FIELDS_LENGTH} characters long", 0)
        found: dict[str, Property] = {}
        while True:
            self.skip_space()
            start = self.pos
            prop = self.property()
            found.setdefault(prop.text, prop)
            if len(found) > MAX_FIELDS:
                self.fail(f"at most {MAX_FIELDS} fields may be asked for", start)
            self.skip_space()
            if self.pos == len(self.text):
                return tuple(found.values())
            self.expect(",", "expected ',' between two fields")

    # -- tokens ------------------------------------------------------------------------------

    def skip_space(self) -> None:
        self.pos = _match(_WHITESPACE, self.text, self.pos).end()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, problem: str) -> None:
        self.skip_space()
        if self.peek() != char:
            self.fail(problem + (", found the end of the filter" if not self.peek() else ""))
        self.pos += 1
        self.skip_space()

    def accept(self, char: str) -> bool:
        self.skip_space()
        if self.peek() != char:
            return False
        self.pos += 1
        self.skip_space()
        return True

    def count_operator(self, position: int) -> None:
        self.operators += 1
        if self.operators > MAX_OPERATORS:
            self.fail(f"a filter holds at most {MAX_OPERATORS} operators", position)

    # -- operators ---------------------------------------------------------------------------

    def term(self, depth: int) -> Node:
        start = self.pos
        found = _OPERATOR.match(self.text, self.pos)
        if not found:
            self.fail("expected an operator such as eq( or and(")
        name = found.group()
        if name not in OPERATORS:
            self.fail(f"unknown operator '{name}'; known are {', '.join(OPERATORS)}")
        if depth > MAX_DEPTH:
            self.fail(f"filters nest at most {MAX_DEPTH} operators deep")
        self.count_operator(start)
        self.pos = found.end()
        self.expect("(", f"expected '(' after {name}")
        node = self.arguments(name, depth)
        self.expect(")", f"expected ')' to close {name}(")
        return node

    def arguments(self, name: str, depth: int) -> Node:
        if name in ("and", "or"):
            terms = [self.term(depth + 1)]
            while self.accept(","):
                terms.append(self.term(depth + 1))
            return Junction("and" if name == "and" else "or", tuple(terms))
        if name == "not":
            node = Not(self.term(depth + 1))
            if self.peek() == ",":
                self.fail("not( takes exactly one filter; wrap several in and( or or(")
            return node
        prop = self.property()
        if name == "exists":
            return Exists(prop)
        self.expect(",", f"expected ',' and a value after the property of {name}(")
        if name == "in":
            return In(prop, tuple(_for(prop, value) for value in self.in_values()))
        if name == "like":
            return Like(prop, self.pattern(prop.is_mac))
        start = self.pos
        value = self.value()
        self.check_single(name, value, start)
        return Compare(_COMPARISONS[name], prop, _for(prop, value))

    def in_values(self) -> tuple[Scalar, ...]:
        values = [self.counted_value()]
        while self.accept(","):
            values.append(self.counted_value())
        return tuple(values)

    def counted_value(self) -> Scalar:
        self.values += 1
        if self.values > MAX_VALUES:
            self.fail(f"the in( operators of a filter hold at most {MAX_VALUES} values")
        return self.value()

    def check_single(self, name: str, value: Scalar, start: int) -> None:
        if name in _ORDERED and (value is None or isinstance(value, bool)):
            self.fail(
                f"{name}( compares numbers or strings; true, false and null have no order", start
            )
        self.skip_space()
        if self.peek() == ",":
            self.fail(f"{name}( takes one property and one value; in( takes several values")

    # -- properties and values ---------------------------------------------------------------

    def property(self) -> Property:
        start = self.pos
        if self.peek() == '"':
            self.fail("a property is written without quotes, like mqtt/host")
        segments = [self.segment()]
        while self.peek() == "/":
            self.pos += 1
            segments.append(self.segment())
        return Property(self.text[start : self.pos], tuple(segments))

    def segment(self) -> str:
        found = _SEGMENT.match(self.text, self.pos)
        if not found:
            self.fail("expected a property: keys joined by '/', like mqtt/host")
        for escape in _POINTER_ESCAPE.finditer(found.group()):
            if escape.group(1) not in ("0", "1"):
                self.fail(
                    "in a property, '~' is written ~0 and '/' is written ~1",
                    found.start() + escape.start(),
                )
        self.pos = found.end()
        return found.group().replace("~1", "/").replace("~0", "~")

    def value(self) -> Scalar:
        start = self.pos
        if self.peek() == '"':
            return self.string()
        found = _WORD.match(self.text, self.pos)
        word = found.group() if found else ""
        self.pos += len(word)
        if word in _LITERALS:
            return _LITERALS[word]
        if not _NUMBER.fullmatch(word):
            self.fail(
                'expected a value: a "double-quoted string", a number, true, false or null',
                start,
            )
        return self.number(word, start)

    def number(self, text: str, start: int) -> int | float:
        """As documents are read (quart_iot.documents): within a double's range."""
        if _INTEGER.fullmatch(text):
            if len(text.lstrip("-")) > MAX_INT_DIGITS or abs(int(text)) > sys.float_info.max:
                self.fail("the number is too large for a double", start)
            return int(text)
        value = float(text)
        if math.isinf(value):
            self.fail("the number is too large for a double", start)
        return value

    def string(self) -> str:
        start = self.pos
        try:  # the json module's own (C) string scanner: its escapes, its errors' positions
            scan = json.decoder.scanstring  # type: ignore[attr-defined]  # not in typeshed
            value, self.pos = scan(self.text, start + 1, True)
        except json.JSONDecodeError as error:  # at the backslash of a bad escape, like \\q
            at = error.pos - 1 if self.text[error.pos - 1 : error.pos + 1] == "\\u" else error.pos
            self.fail(_string_problem(error.msg), at)
        if _SURROGATE.search(value):
            self.fail("the string holds a lone UTF-16 surrogate, which is not Unicode", start)
        if "\x00" in value:
            self.fail("a string may not hold \\u0000 (NUL)", start)
        return str(value)

    def pattern(self, lowercase: bool) -> Glob:
        start = self.pos
        if self.peek() != '"':
            self.fail('like( takes a "double-quoted" pattern')
        text = self.string()
        return _glob(text.lower() if lowercase else text, lambda problem: self.fail(problem, start))


def _for(prop: Property, value: Scalar) -> Scalar:
    """MACs are stored lowercase and accepted in any case: so are the values they are
    compared with."""
    return value.lower() if prop.is_mac and isinstance(value, str) else value


def _match(pattern: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    found = pattern.match(text, pos)
    assert found is not None  # the pattern matches the empty string
    return found


_STRING_PROBLEMS = {
    "Unterminated string starting at": "the string is not closed: a '\"' is missing",
    "Invalid control character at": "a string may not hold a raw control character; escape it",
    "Invalid \\escape": 'invalid escape in a string: JSON allows \\" \\\\ \\/ \\b \\f \\n \\r '
    "\\t \\uXXXX (a like-pattern's \\* is written \\\\*)",
    "Invalid \\uXXXX escape": "invalid \\uXXXX escape in a string",
}


def _string_problem(message: str) -> str:
    return _STRING_PROBLEMS.get(message, message)


def _glob(pattern: str, fail: Callable[[str], NoReturn]) -> Glob:
    """`*` any run, `?` one character, a backslash makes the next character literal."""
    parts: list[str | Wildcard] = []
    literal: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                fail("a like pattern ends with a '\\' that escapes nothing")
            literal.append(escaped)
        elif char in "*?":
            if literal:
                parts.append("".join(literal))
                literal.clear()
            wildcard = Wildcard(char)
            if not (wildcard is Wildcard.ANY and parts and parts[-1] is Wildcard.ANY):
                parts.append(wildcard)
        else:
            literal.append(char)
    if literal:
        parts.append("".join(literal))
    return Glob(tuple(parts))
