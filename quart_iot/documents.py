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
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
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


_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
)


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no overflowing numbers, bounded nesting."""
    if _containers(data) > MAX_CONTAINERS:
        raise InvalidJson(f"JSON holds more than {MAX_CONTAINERS} objects and arrays")
    try:
        text = data.decode("utf-8")
        value = _decoder.decode(text)
    except UnicodeDecodeError:
        raise InvalidJson("not valid UTF-8") from None
    except RecursionError:
        raise InvalidJson(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except InvalidJson:
        raise
    except ValueError as error:  # JSONDecodeError, and int() beyond its digit limit
        raise InvalidJson(f"not valid JSON: {error}") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise InvalidJson(f"JSON is nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise InvalidJson("a string holds a lone UTF-16 surrogate, which is not Unicode")
    return value


def _containers(data: bytes) -> int:
    """How many objects and arrays the JSON text opens, counted before building any."""
    brackets = data.count(b"[") + data.count(b"{")  # an upper bound: strings may hold some
    if brackets <= MAX_CONTAINERS:
        return brackets
    outside = _STRING.sub(b"", data)
    return outside.count(b"[") + outside.count(b"{")


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _depth_exceeds(value: Any, limit: int) -> bool:
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return False
    return any(isinstance(node, dict | list) for node in level)


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
