"""Device models as every store keeps them: one JSON object per model code, `{"name": ...,
"configSchema": ...}`, stored as compact bytes (the same bytes, so the same ETag, in every
store), and which documents name which model.

A document names a model when its list item's `device_model` is a model code: the directory
store reads it from the summary it keeps per document, PostgreSQL from a generated column
with the same regular expression (store/postgres/schema.py), so both count the same devices.
"""

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from quart_iot.documents import Document, InvalidJson, dump_document, etag_of, parse_document
from quart_iot.errors import DocumentTooLarge, ModelUnreadable, PreconditionFailed
from quart_iot.store.records import Precondition

# `"device_model":"<code>"` in a summary: unambiguous, since inside a JSON string every quote
# is escaped (`\"`), so `:"` occurs only between a member's name and a string value.
MODEL_IN_SUMMARY = r'"device_model":"([a-z0-9_]{1,64})"'  # PostgreSQL's generated column too
_MODEL_IN_SUMMARY = re.compile(MODEL_IN_SUMMARY.encode())


class ModelChanged(Exception):
    """The model a write's content was validated against changed before the write was decided:
    validate again (never reaches a client)."""


def model_named(summary_json: bytes) -> str | None:
    """The model code a document's list item names (None: no model, or not a code)."""
    found = _MODEL_IN_SUMMARY.search(summary_json)
    return found[1].decode() if found else None


@dataclass(frozen=True)
class StoredModel:
    """A device model as stored: its code, its bytes, their strong ETag (unquoted)."""

    code: str
    raw: bytes
    etag: str

    @classmethod
    def of_bytes(cls, code: str, raw: bytes) -> "StoredModel":
        """A model read back; ModelUnreadable when the bytes are not a model."""
        model = cls(code, raw, etag_of(raw))
        try:
            content = model.content
        except InvalidJson:
            raise ModelUnreadable(code, "is not a JSON object") from None
        if set(content) != {"name", "configSchema"} or not isinstance(content["name"], str):
            raise ModelUnreadable(code, 'is not {"name": <text>, "configSchema": ...}')
        if not isinstance(content["configSchema"], dict | None):
            raise ModelUnreadable(code, "has a configSchema that is neither an object nor null")
        return model

    @classmethod
    def of_content(cls, code: str, name: str, schema: Document | None) -> "StoredModel":
        """A model as every store writes it."""
        raw = dump_document({"name": name, "configSchema": schema})
        return cls(code, raw, etag_of(raw))

    def check_size(self, max_bytes: int) -> None:
        """DocumentTooLarge (413) past the store's limit, which its reads apply too."""
        if len(self.raw) > max_bytes:
            raise DocumentTooLarge(len(self.raw), max_bytes)

    @cached_property
    def content(self) -> Document:
        """`{"name": ..., "configSchema": ...}`, parsed once."""
        return parse_document(self.raw)

    @property
    def name(self) -> str:
        name: str = self.content["name"]
        return name

    @property
    def schema(self) -> Document | None:
        schema: Document | None = self.content["configSchema"]
        return schema


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model and how many documents name it now."""

    stored: StoredModel
    devices: int

    def summary(self) -> dict[str, Any]:
        """The model as the list shows it."""
        return {
            "code": self.stored.code,
            "name": self.stored.name,
            "has_schema": self.stored.schema is not None,
            "device_count": self.devices,
        }

    def detail(self) -> dict[str, Any]:
        """The model with its schema (GET, PUT)."""
        return {**self.summary(), "configSchema": self.stored.schema}


def check_model_condition(code: str, precondition: Precondition, current: str | None) -> None:
    """If-Match and If-None-Match against a model's current ETag (None: no such model)."""
    if_match, if_none_match = precondition.if_match, precondition.if_none_match
    if if_match and not (current and (if_match.star_tag or if_match.contains(current))):
        raise PreconditionFailed(code, "If-Match", "Device model")
    if if_none_match and current and if_none_match.contains_weak(current):
        raise PreconditionFailed(code, "If-None-Match", "Device model")
