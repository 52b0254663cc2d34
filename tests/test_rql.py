"""RQL: what each operator selects, nesting, quoting and escaping, errors and their positions,
bounds, and `fields`."""

import random
import re
from typing import Any

import pytest

from quart_iot.errors import InvalidFields, InvalidFilter
from quart_iot.rql import Fields, Filter
from quart_iot.rql.nodes import Compare, Glob, Junction, Property, Wildcard
from quart_iot.rql.predicate import compile_filter
from quart_iot.rql.syntax import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_OPERATORS,
    MAX_VALUES,
    parse_filter,
)
from tests.rql_cases import DOCUMENTS

# The hand-made documents of tests/rql_cases.py, by their last digit.
SMALL = {mac: content for mac, content in DOCUMENTS.items() if mac[:2] in ("aa", "bb")}
ALL = set(range(1, 10))


def selected(text: str) -> set[int]:
    return {int(mac[-1]) for mac in Filter(text).select(SMALL.items())}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # eq: JSON equality; true is not 1, 1 is 1.0, null is a value and missing is not
        ('eq(deviceModel,"relay_board")', {1, 2}),
        ("eq(deviceModel,1)", {6}),
        ("eq(deviceModel,1.0)", {6}),
        ("eq(deviceModel,true)", set()),
        ("eq(enableOTA,null)", {3}),
        ("eq(enableOTA,false)", {2}),
        ("eq(enableOTA,0)", set()),
        ("eq(version,3)", {1}),
        ("eq(version,3.0)", {1}),
        ('eq(version,"3")', {3}),
        ("eq(version,1)", set()),
        ("eq(version,true)", {4}),
        ("eq(version,0)", {8, 9}),
        ("eq(version,-0)", {8, 9}),
        ("eq(mqtt/port,8883)", {2}),
        ('eq(mqtt/host,"broker.lan")', {1}),
        ('eq(tags,"prod")', set()),  # an array is not searched element by element
        ('eq(deviceName,"Line\\nbreak")', {7}),
        ('eq(deviceName,"K\\u00fcche *Sensor*")', {3}),
        # ne is not(eq): a device without the property is selected
        ('ne(mqtt/host,"broker.lan")', ALL - {1}),
        ("ne(enableOTA,true)", ALL - {1}),
        ("ne(enableOTA,null)", ALL - {3}),
        # order: numbers with numbers, strings with strings by code point, nothing across
        ("gt(version,3)", {2, 6}),
        ("ge(version,3)", {1, 2, 6}),
        ("lt(version,3)", {7, 8, 9}),
        ("le(version,-0.5)", {7}),
        ('gt(version,"2")', {3}),
        ("gt(mqtt/port,1000)", {1, 2}),
        ("gt(deviceModel,0)", {6}),
        ('lt(deviceName,"R")', {3, 4, 6, 7}),
        ('gt(deviceName,"relay")', {2}),
        # in
        ("in(version,3,0)", {1, 8, 9}),
        ("in(version,true,null)", {4}),
        ('in(version,"3",3.5)', {2, 3}),
        ("in(enableOTA,1)", set()),
        ("in(enableOTA,null,false)", {2, 3}),
        # like: whole strings, * and ?, backslash escapes, case-sensitive, strings only
        ('like(deviceModel,"relay*")', {1, 2}),
        ('like(deviceModel,"*_*")', {1, 2, 3, 4, 7}),
        ('like(deviceModel,"?elay_board")', {1, 2}),
        ('like(deviceName,"*\\\\**")', {3, 9}),
        ('like(deviceName,"a\\\\?b")', {8}),
        ('like(deviceName,"a?b")', {8, 9}),
        ('like(deviceName,"50% off_*")', {4}),
        ('like(deviceName,"*\\\\\\\\x")', {4}),
        ('like(deviceName,"")', {6}),
        ('like(deviceName,"?")', set()),
        ('like(deviceName,"*")', ALL - {5}),
        ('like(deviceName,"Line?break")', {7}),
        ('like(deviceName,"K?che*")', {3}),
        ('like(version,"3*")', {3}),
        # exists: present, even as null
        ("exists(enableOTA)", {1, 2, 3}),
        ("exists(mqtt/host)", {1, 2, 3, 6}),
        ("exists(n)", {8}),
        # paths: escapes, arrays by index (JSON Pointer's: no sign, no leading zero)
        ("exists(a~1b)", {4}),
        ("eq(t~0x,2)", {4}),
        ('eq(it\'s,"quote")', {8}),
        ('eq(nested/deep/er/est,"x")', {6}),
        ('eq(sensors/0/type,"pir")', {1}),
        ("eq(list/1,20)", {4}),
        ('eq(list/0,"key zero")', {6}),
        ('eq(list/01,"key zero one")', {6}),
        ("exists(list/01)", {6}),
        ("exists(list/-1)", {6}),
        ("eq(list/0/1,2)", {8}),
        ('eq(list/1/k,"v")', {8}),
        ("exists(list/3)", set()),
        ("exists(deviceName/0)", set()),
        # the MAC: any case, always there, a string
        ('eq(mac_address,"AA-00-00-00-00-02")', {2}),
        ("eq(mac_address,1)", set()),
        ("ne(mac_address,null)", ALL),
        ('like(mac_address,"BB-*")', {9}),
        ('in(mac_address,"aa-00-00-00-00-01","AA-00-00-00-00-03")', {1, 3}),
        ('gt(mac_address,"AA-00-00-00-00-07")', {8, 9}),
        ("not(exists(mac_address))", set()),
        # logic
        ('not(eq(deviceModel,"relay_board"))', ALL - {1, 2}),
        ("not(gt(version,3))", ALL - {2, 6}),
        ('and(eq(deviceModel,"relay_board"),ne(mqtt/host,"broker.lan"))', {2}),
        ("or(eq(version,true),exists(n))", {4, 8}),
        ("or(exists(n))", {8}),
        ('and(like(deviceName,"*"),or(lt(version,0),not(exists(mqtt))),not(eq(version,0)))', {7}),
        (" and ( eq ( version , 3 ) ,\n\tgt(mqtt/port , 1000) ) ", {1}),
    ],
)
def test_what_a_filter_selects(text: str, expected: set[int]) -> None:
    assert selected(text) == expected


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("", 0, "the filter is empty"),
        ("   ", 3, "the filter is empty"),
        ('deviceModel=="x"', 0, "unknown operator 'deviceModel'"),
        ("==", 0, "expected an operator"),
        ("foo(a,1)", 0, "unknown operator 'foo'"),
        ("eq", 2, "expected '(' after eq, found the end of the filter"),
        ("eq[a,1]", 2, "expected '(' after eq"),
        ("eq(a,1", 6, "expected ')' to close eq("),
        ("eq(a,1))", 7, "unexpected text after the end"),
        ("eq(a,1) eq(b,2)", 8, "unexpected text after the end"),
        ("eq(a)", 4, "expected ',' and a value after the property of eq("),
        ("eq(a,)", 5, "expected a value"),
        ("eq(a,relay_board)", 5, 'expected a value: a "double-quoted string"'),
        ("eq(a,'x')", 5, "expected a value"),
        ("eq(a,TRUE)", 5, "expected a value"),
        ("eq(a,12abc)", 5, "expected a value"),
        ("eq(a,01)", 5, "expected a value"),
        ("eq(a,1.)", 5, "expected a value"),
        ("eq(a,+1)", 5, "expected a value"),
        ("eq(a,1e999)", 5, "too large for a double"),
        ("eq(a," + "9" * 400 + ")", 5, "too large for a double"),
        ('eq(a,"x",1)', 8, "takes one property and one value"),
        ('eq("a",1)', 3, "without quotes"),
        ("eq(,1)", 3, "expected a property"),
        ("eq(a//b,1)", 5, "expected a property"),
        ("eq(/a,1)", 3, "expected a property"),
        ("eq(a/,1)", 5, "expected a property"),
        ("eq(a~2,1)", 4, "'~' is written ~0"),
        ("eq(ab~,1)", 5, "'~' is written ~0"),
        ("eq(a b,1)", 5, "expected ',' and a value"),
        ('eq(a,"abc)', 5, "the string is not closed"),
        ('eq(a,"a\\qb")', 7, "invalid escape"),
        ('eq(a,"\\u12")', 6, "\\uXXXX"),
        ('eq(a,"a\tb")', 7, "raw control character"),
        ('eq(a,"\\ud800")', 5, "lone UTF-16 surrogate"),
        ('eq(a,"\\u0000")', 5, "NUL"),
        ("gt(a,null)", 5, "true, false and null have no order"),
        ("le(a,true)", 5, "have no order"),
        ('gt(a,"x",1)', 8, "takes one property and one value"),
        ("like(a,1)", 7, 'like( takes a "double-quoted" pattern'),
        ('like(a,"x\\\\")', 7, "escapes nothing"),
        ("in(a)", 4, "expected ',' and a value"),
        ("in(a,)", 5, "expected a value"),
        ("in(a,1,)", 7, "expected a value"),
        ("exists(a,1)", 8, "expected ')' to close exists("),
        ("not(eq(a,1),eq(b,2))", 11, "not( takes exactly one filter"),
        ("not()", 4, "expected an operator"),
        ("and()", 4, "expected an operator"),
        ("and(eq(a,1),)", 12, "expected an operator"),
        ("and(eq(a,1) eq(b,2))", 12, "expected ')' to close and("),
        ("or(a)", 3, "unknown operator 'a'"),
    ],
)
def test_a_malformed_filter_names_its_position(text: str, position: int, problem: str) -> None:
    with pytest.raises(InvalidFilter) as raised:
        Filter(text)
    error = raised.value
    assert (error.status, error.code) == (400, "INVALID_FILTER")
    assert error.details is not None
    assert error.details["position"] == position, error.message
    assert problem in error.message
    assert error.message.startswith(f"Invalid filter at position {position}: ")
    assert error.details["near"] == text[position : position + 24]


def test_bounds_length_depth_operators_and_values() -> None:
    longest = 'eq(a,"' + "x" * (MAX_LENGTH - 8) + '")'
    assert len(longest) == MAX_LENGTH
    Filter(longest)
    assert _position(longest + " ") == MAX_LENGTH
    assert _position("x" * 10 * MAX_LENGTH) == MAX_LENGTH

    deepest = "not(" * (MAX_DEPTH - 1) + "exists(a)" + ")" * (MAX_DEPTH - 1)
    Filter(deepest)
    too_deep = "not(" * MAX_DEPTH + "exists(a)" + ")" * MAX_DEPTH
    assert _position(too_deep) == 4 * MAX_DEPTH

    most = "or(" + ",".join(["exists(a)"] * (MAX_OPERATORS - 1)) + ")"
    Filter(most)
    too_many = "or(" + ",".join(["exists(a)"] * MAX_OPERATORS) + ")"
    assert _position(too_many) == len(too_many) - len("exists(a))")

    values = "or(in(a," + ",".join(["1"] * (MAX_VALUES - 1)) + "),in(b,2))"
    Filter(values)
    assert _position(values.replace("in(b,2)", "in(b,2,3)")) == len(values) - 1


def _position(text: str) -> int:
    with pytest.raises(InvalidFilter) as raised:
        Filter(text)
    assert raised.value.details is not None
    position: int = raised.value.details["position"]
    return position


@pytest.mark.timeout(30)
def test_a_hostile_like_pattern_costs_linear_time() -> None:
    # A regex of `.*` runs would backtrack cubically here (and a pattern of 40 stars, more).
    value = "a" * 200_000
    assert not Filter('like(x,"' + "*a" * 40 + '*b")').matches("m", {"x": value})
    assert Filter('like(x,"' + "*a" * 40 + '*")').matches("m", {"x": value})
    assert not Filter('like(x,"' + "*?a" * 30 + '*b")').matches("m", {"x": value})


def _reference_like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def test_like_agrees_with_a_regex_on_random_patterns() -> None:
    rng = random.Random(21)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(0, 7)))
        value = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 9)))
        predicate = Filter(f'like(x,"{pattern}")').matches
        assert predicate("m", {"x": value}) == _reference_like(pattern, value), (pattern, value)


def test_parsed_form() -> None:
    node = parse_filter('and(eq(mqtt/host,"b"),like(a~1b/~0,"x\\\\*y*?"))')
    assert isinstance(node, Junction)
    assert node.terms[0] == Compare("eq", Property("mqtt/host", ("mqtt", "host")), "b")
    like = node.terms[1]
    assert like.prop == Property("a~1b/~0", ("a/b", "~"))  # type: ignore[union-attr]
    assert like.pattern == Glob(("x*y", Wildcard.ANY, Wildcard.ONE))  # type: ignore[union-attr]
    assert parse_filter("eq(a,-1.5e-3)") == Compare("eq", Property("a", ("a",)), -0.0015)
    assert parse_filter('like(a,"**x**")').pattern.parts == (  # type: ignore[union-attr]
        Wildcard.ANY,
        "x",
        Wildcard.ANY,
    )


def test_compiled_once_and_reused() -> None:
    predicate = compile_filter(parse_filter('eq(a/b,"x")'))
    assert predicate("m", {"a": {"b": "x"}})
    assert not predicate("m", {"a": ["x"]})
    assert not predicate("m", {"a": "x"})
    assert not predicate("m", {})


# -- fields ------------------------------------------------------------------------------------


def test_fields_are_the_values_at_their_paths_null_when_missing() -> None:
    fields = Fields("mqtt/host, enableOTA,mqtt,mac_address,sensors/0/pin,nothing/here,mqtt/host")
    content: dict[str, Any] = DOCUMENTS["aa-00-00-00-00-01"]
    assert fields.of("aa-00-00-00-00-01", content) == {
        "mqtt/host": "broker.lan",
        "enableOTA": True,
        "mqtt": {"host": "broker.lan", "port": 1883, "tls": False},
        "mac_address": "aa-00-00-00-00-01",
        "sensors/0/pin": 4,
        "nothing/here": None,
    }
    assert Fields("enableOTA").of("m", {"enableOTA": None}) == {"enableOTA": None}
    assert Fields("a~1b").of("m", {"a/b": 1}) == {"a~1b": 1}


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("", 0, "expected a property"),
        ("a,", 2, "expected a property"),
        ("a,,b", 2, "expected a property"),
        ("a b", 2, "expected ',' between two fields"),
        ('"a"', 0, "without quotes"),
        ("a(b)", 1, "expected ',' between two fields"),
        (",".join(f"f{n}" for n in range(33)), 3 * 10 + 4 * 22, "at most 32 fields"),
        ("a" * 1025, 0, "at most 1024 characters"),
    ],
)
def test_malformed_fields_name_their_position(text: str, position: int, problem: str) -> None:
    with pytest.raises(InvalidFields) as raised:
        Fields(text)
    error = raised.value
    assert (error.status, error.code) == (400, "INVALID_FIELDS")
    assert error.details is not None
    assert (error.details["position"], error.details["parameter"]) == (position, "fields")
    assert problem in error.message
    assert error.message.startswith(f"Invalid fields at position {position}: ")
