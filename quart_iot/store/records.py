"""The values every store shares: MACs, version ids, stored documents, write conditions, and
the JSON of a history page (so that a client cannot tell the stores apart)."""

import json
import re
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import ETags

from quart_iot.documents import Document, dump_document, etag_of, parse_document, summary_fields
from quart_iot.errors import DocumentTooLarge, InvalidMac, InvalidVersion
from quart_iot.identifiers import MAC_PATTERN, VERSION_PATTERN

_MAC = re.compile(MAC_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def canonical_mac(raw: str) -> str:
    """The lowercase MAC, or InvalidMac for anything that is not exactly six hex pairs."""
    if len(raw) != 17 or not _MAC.fullmatch(raw):
        raise InvalidMac
    return raw.lower()


def check_version(raw: str) -> str:
    """The version id, or InvalidVersion for anything that is not exactly one."""
    if len(raw) != 28 or not _VERSION.fullmatch(raw):
        raise InvalidVersion
    return raw


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """A stored document: its bytes as stored, its list item (JSON), strong ETag (unquoted)."""

    mac: str
    raw: bytes
    summary_json: bytes
    etag: str
    # The document, when whoever read the bytes parsed them anyway (a PATCH then parses a
    # 20 KB document once, not twice). Never changed by those who read it.
    parsed: Document | None = field(default=None, compare=False, repr=False)

    @property
    def content(self) -> Document:
        """The parsed document (parsed on demand: serving it needs only its bytes)."""
        return self.parsed if self.parsed is not None else parse_document(self.raw)

    def detail_json(self) -> bytes:
        """The Detail body: the summary and the document, as stored when that is UTF-8 JSON."""
        content = self.raw.rstrip()
        if b"\\u" in content:  # escapes (from another tool): the API serves non-ASCII as is
            content = json.dumps(self.content, ensure_ascii=False).encode()
        return self.summary_json[:-1] + b',"content":' + content + b"}"

    @classmethod
    def of_bytes(cls, mac: str, raw: bytes, content: Document) -> "StoredConfig":
        """A document from its stored bytes and their parsed content (kept)."""
        return cls(mac, raw, summary_json(mac, content), etag_of(raw), content)


def to_store(mac: str, content: Document, max_bytes: int) -> StoredConfig:
    """The document as every store keeps it: the same bytes, so the same ETag, whatever the
    store (DocumentTooLarge past `max_bytes`)."""
    raw = dump_document(content)
    if len(raw) > max_bytes:
        raise DocumentTooLarge(len(raw), max_bytes)
    return StoredConfig(mac, raw, summary_json(mac, content), etag_of(raw))  # not the caller's


def summary_json(mac: str, content: Document) -> bytes:
    """The list item of a document, rendered once per version of it."""
    name, entity, ota = summary_fields(content)
    model = content.get("deviceModel")
    summary = {
        "mac_address": mac,
        "device_name": name,
        "device_model": model if isinstance(model, str) else None,  # as it is, even no code
        "device_entity_id": entity,
        "enable_ota": ota,
    }
    return json.dumps(summary, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Precondition:
    """What a write requires of the current document (from allow_overwrite and If-* headers),
    and of the device model its content was validated against."""

    overwrite: bool = True
    if_match: ETags = field(default_factory=ETags)
    if_none_match: ETags = field(default_factory=ETags)
    # (code, ETag): the model version the content conforms to, which must still be current
    # when the write is decided (else ModelChanged, or UnknownModel once it is gone).
    model: tuple[str, str] | None = None

    @property
    def create_only(self) -> bool:
        return not self.overwrite or self.if_none_match.star_tag


def version_item(stored: StoredConfig, about: dict[str, Any]) -> bytes:
    """One version in a history page: its summary, then `about` (version, etag, saved_at,
    size, change, subject), as one JSON object."""
    return stored.summary_json[:-1] + b"," + compact_json(about)[1:]


def history_page(mac: str, items: list[bytes], older: str | None) -> bytes:
    """A page of a device's history: `{"mac_address", "versions", "count", "next"}`, where
    `next` is the cursor of the following page (pass it as `?before=`), null on the last."""
    head = compact_json({"mac_address": mac})[:-1]
    tail = compact_json(older)
    return b'%s,"versions":[%s],"count":%d,"next":%s}' % (head, b",".join(items), len(items), tail)


def compact_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
