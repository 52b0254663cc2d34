"""Strict JSON for stored documents and request bodies: parse, check, serialise, fingerprint."""

import hashlib
import json
import math
import re
import sys
from typing import Any

MAX_DEPTH = 64
# Objects and arrays in one document. Python builds one object per container, and the C
# decoder and encoder hold the GIL throughout: a 1 MiB body of nested arrays (520,000 of
# them) took 330 ms to decode and 100 ms to encode, stalling every other request. A real
# config has tens or hundreds; at this bound a maximal body costs a few milliseconds.
MAX_CONTAINERS = 10_000
# Values in all (each number, string, object...). The same holds for scalars, more cheaply:
# 500,000 small numbers took 40 ms to decode and 50 ms to encode with the GIL held.
MAX_VALUES = 100_000
# The shape is checked on the bytes before anything is built: escapes out, then everything
# but brackets, commas and quotes, then the strings (C passes over the text, a short loop).
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}",')))
_QUOTED = re.compile(rb'"[^"]*"')
# A double holds at most 309 integer digits; int() refuses more than 4300 with a Python message.
MAX_INT_DIGITS = 309
# `\uD800`-`\uDFFF` escapes: a pair is one character, a lone one is not Unicode at all.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

Document = dict[str, Any]
_COMPACT = (",", ":")


class InvalidJson(ValueError):
    """The bytes are not strict JSON (or not within our limits)."""


def _reject_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not allowed in JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJson(f"number {text[:20]} is too large for a double")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidJson("integer is too large for a double")
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise InvalidJson("integer is too large for a double")
    return value


_checked = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
)
# The number hooks are a Python call per number (half a second for a body of 500,000): a text
# with no long digit run and no three-digit exponent holds no number they could refuse, so it
# takes the decoder's C path (a 199-digit mantissa with e99 is at most 1e298, within a double).
_fast = json.JSONDecoder(parse_constant=_reject_constant)
_DIGIT_RUNS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_BIG_EXPONENT = re.compile(rb"[eE][-+]?[0-9]{3}")


def _risky_numbers(data: bytes) -> bool:
    return b"0" * 200 in data.translate(_DIGIT_RUNS) or bool(_BIG_EXPONENT.search(data))


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no overflowing numbers, bounded nesting."""
    _check_shape(data)
    try:
        text = data.decode("utf-8")
        value = (_checked if _risky_numbers(data) else _fast).decode(text)
    except UnicodeDecodeError:
        raise InvalidJson("not valid UTF-8") from None
    except RecursionError:
        raise InvalidJson(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except InvalidJson:
        raise
    except ValueError as error:  # JSONDecodeError, and int() beyond its digit limit
        raise InvalidJson(f"not valid JSON: {error}") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise InvalidJson("a string holds a lone UTF-16 surrogate, which is not Unicode")
    return value


def check_limits(data: bytes) -> None:
    """InvalidJson when strict JSON bytes (dump_document's) hold more objects, arrays or
    values, or nest deeper, than a request body may: the limits without a parse."""
    _check_shape(data)


def _check_shape(data: bytes) -> None:
    """At most MAX_CONTAINERS objects and arrays and MAX_VALUES values, nested at most
    MAX_DEPTH deep."""
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)  # then no quote inside a string is escaped
    structure = _QUOTED.sub(b"", data.translate(None, _NOT_STRUCTURE))
    brackets = structure.translate(None, b",")
    containers = brackets.count(b"[") + brackets.count(b"{")
    if containers > MAX_CONTAINERS:
        raise InvalidJson(f"JSON holds more than {MAX_CONTAINERS} objects and arrays")
    if len(structure) - len(brackets) + containers + 1 > MAX_VALUES:  # commas, containers, top
        raise InvalidJson(f"JSON holds more than {MAX_VALUES} values")
    if len(brackets) > 2 * MAX_CONTAINERS:
        raise InvalidJson("not valid JSON: more closing brackets than opening ones")
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            raise InvalidJson(f"JSON is nested deeper than {MAX_DEPTH} levels")


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_document(data: bytes) -> Document:
    """A stored document: strict JSON whose top level is an object."""
    value = parse_json(data)
    if not isinstance(value, dict):
        raise InvalidJson("the document is not a JSON object")
    return value


def dump_document(content: Document) -> bytes:
    """How a document is stored: compact, key order kept, non-ASCII as UTF-8, a final newline."""
    # Compact, not indented: indenting made a 1 MiB body of nested arrays a 65 MB file, and
    # Python's indenting encoder is pure Python (slow, and it holds the GIL); this one is C.
    return (
        json.dumps(content, ensure_ascii=False, separators=_COMPACT, allow_nan=False).encode()
        + b"\n"
    )


def etag_of(data: bytes) -> str:
    """A strong ETag (unquoted) from the stored bytes: the same on every replica."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def summary_fields(content: Document) -> tuple[str | None, str | None, bool | None]:
    """deviceName, deviceEntityId and enableOTA, each None when missing or of the wrong type."""
    name = content.get("deviceName")
    entity = content.get("deviceEntityId")
    ota = content.get("enableOTA")
    return (
        name if isinstance(name, str) else None,
        entity if isinstance(entity, str) else None,
        ota if isinstance(ota, bool) else None,
    )
