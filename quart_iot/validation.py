"""Device models' JSON Schemas (draft 2020-12): checked and compiled once, applied to documents.

The validator is jsonschema-rs (Rust): draft 2020-12, every error with its instance path, and
no retrieval at all in `offline` mode, so a `$ref` that leaves the schema fails compilation
without a request. Why it and not jsonschema or fastjsonschema: docs/PERFORMANCE.md. It is
imported by the first schema checked: a service with no device model does not pay its 3 MiB.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import islice
from typing import TYPE_CHECKING, Any

from quart_iot.documents import Document, dump_document
from quart_iot.errors import InvalidModelCode, InvalidSchema, SchemaViolation, UnknownModel
from quart_iot.patch import escape, pointer

if TYPE_CHECKING:
    import jsonschema_rs

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_VIOLATIONS = 50
# A message may quote the offending value, which may be a long string: an error body of 50
# violations stays small.
MAX_MESSAGE = 300
MODEL_CODE_PATTERN = r"[a-z0-9_]{1,64}"  # also published in the OpenAPI document
_MODEL_CODE = re.compile(MODEL_CODE_PATTERN)
_REFERENCES = ("$ref", "$dynamicRef")
CACHE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a value breaks a schema: where (a JSON Pointer), the keyword, and a sentence."""

    path: str
    keyword: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "keyword": self.keyword, "message": self.message}


@dataclass(frozen=True, slots=True)
class Violations:
    """At most MAX_VIOLATIONS, in the order the validator met them; `truncated` when more."""

    items: tuple[Violation, ...]
    truncated: bool = False

    def __bool__(self) -> bool:
        return bool(self.items)

    def as_json(self) -> list[dict[str, str]]:
        return [violation.as_json() for violation in self.items]


@dataclass(frozen=True, slots=True, eq=False)
class CompiledSchema:
    """A model version's configSchema, checked and compiled: what its documents meet."""

    schema: Document
    validator: jsonschema_rs.Validator


def model_code(raw: str) -> str:
    """A model code from a URL, or InvalidModelCode (400): matched in full, no newline."""
    if len(raw) > 64 or not _MODEL_CODE.fullmatch(raw):
        raise InvalidModelCode
    return raw


def model_of(content: Document) -> str | None:
    """The model a document names in its top-level `deviceModel` (None, or null: no model)."""
    code = content.get("deviceModel")
    if code is None:
        return None
    if not isinstance(code, str) or not _MODEL_CODE.fullmatch(code):
        raise UnknownModel(code)
    return code


def check_schema(schema: Document) -> CompiledSchema:
    """The compiled schema, or InvalidSchema with where the schema is wrong."""
    import jsonschema_rs

    _check_dialect(schema)
    wrong = _collect(_violation(error) for error in _meta_schema().iter_errors(schema))
    if wrong:
        raise InvalidSchema(wrong.as_json(), wrong.truncated)
    try:
        validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)
    except jsonschema_rs.ValidationError as error:  # a $ref outside the schema, a bad regex
        raise InvalidSchema([_compile_violation(schema, error).as_json()]) from None
    return CompiledSchema(schema, validator)


def violations(compiled: CompiledSchema, content: Any) -> Violations:
    """Every way `content` breaks the schema (the first MAX_VIOLATIONS)."""
    return _collect(_violation(error) for error in compiled.validator.iter_errors(content))


def conform(compiled: CompiledSchema, model: str, content: Document) -> None:
    """Nothing when `content` conforms; else SchemaViolation (422) with its violations."""
    if compiled.validator.is_valid(content):  # the common case, and cheaper than iter_errors
        return
    found = violations(compiled, content)
    raise SchemaViolation(model, found.as_json(), found.truncated)


class SchemaCache:
    """Compiled schemas by the key of the model version they came from (its ETag), least
    recently used out past CACHE_BYTES of schema. Safe to use from several threads."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[CompiledSchema, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CompiledSchema | None:
        """The schema compiled for key, if it is kept (cheap: no compilation)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def compiled(self, key: str, schema: Document) -> CompiledSchema:
        """The schema compiled once per key; InvalidSchema (not kept) when it does not compile."""
        if (kept := self.get(key)) is not None:
            return kept
        compiled = check_schema(schema)  # outside the lock: a large schema takes a while
        self._keep(key, compiled, len(dump_document(schema)))
        return compiled

    def _keep(self, key: str, compiled: CompiledSchema, size: int) -> None:
        with self._lock:
            if key in self._entries:  # another thread compiled it meanwhile
                return
            self._entries[key] = (compiled, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)


@cache
def _meta_schema() -> jsonschema_rs.Validator:
    """The 2020-12 meta-schema, built into jsonschema-rs (never fetched)."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator({"$ref": DIALECT}, offline=True)


def _check_dialect(schema: Document) -> None:
    # Checked before the meta-schema is: jsonschema-rs would try to fetch an unknown dialect.
    if schema.get("$schema", DIALECT) not in (DIALECT, DIALECT + "#"):
        message = f"only JSON Schema draft 2020-12 is supported: $schema must be {DIALECT}"
        raise InvalidSchema([Violation("/$schema", "$schema", message).as_json()])


def _collect(found: Iterable[Violation]) -> Violations:
    first = list(islice(found, MAX_VIOLATIONS + 1))
    return Violations(tuple(first[:MAX_VIOLATIONS]), len(first) > MAX_VIOLATIONS)


def _violation(error: jsonschema_rs.ValidationError) -> Violation:
    return Violation(pointer(error.instance_path), error.kind.name, _short(error.message))


def _compile_violation(schema: Document, error: jsonschema_rs.ValidationError) -> Violation:
    """Where compilation failed: the place it names (a regex), else the `$ref` it names."""
    message = _short(error.message)
    if error.instance_path:  # a "pattern" that is no regex, say
        return Violation(pointer(error.instance_path), error.kind.name, message)
    for path, keyword, reference in _references(schema, ""):
        if reference in message or reference.lstrip("#") in message:
            return Violation(path, keyword, message)
    return Violation("", error.kind.name, message)


def _references(schema: Any, path: str) -> Iterator[tuple[str, str, str]]:
    """(JSON Pointer, keyword, reference) of every `$ref` and `$dynamicRef` in the schema."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            here = f"{path}/{escape(key)}"
            if key in _REFERENCES and isinstance(value, str):
                yield here, key, value
            else:
                yield from _references(value, here)
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _references(value, f"{path}/{index}")


def _short(message: str) -> str:
    message = message.split("\n", 1)[0]
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
