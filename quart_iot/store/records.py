"""The store's values: MACs, stored documents, write conditions and file signatures."""

import json
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from werkzeug.datastructures import ETags

from quart_iot.documents import Document, parse_document, summary_fields
from quart_iot.errors import InvalidMac

MAC_PATTERN = r"[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}"  # also published in the OpenAPI document
_MAC = re.compile(MAC_PATTERN)


def canonical_mac(raw: str) -> str:
    """The lowercase MAC, or InvalidMac for anything that is not exactly six hex pairs."""
    if len(raw) != 17 or not _MAC.fullmatch(raw):
        raise InvalidMac
    return raw.lower()


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """A stored document: its bytes as on disk, its list item (JSON), strong ETag (unquoted)."""

    mac: str
    raw: bytes
    summary_json: bytes
    etag: str

    @property
    def content(self) -> Document:
        """The parsed document (parsed on demand: serving it needs only its bytes)."""
        return parse_document(self.raw)

    def detail_json(self) -> bytes:
        """The Detail body: the summary and the document, as stored when that is UTF-8 JSON."""
        content = self.raw.rstrip()
        if b"\\u" in content:  # escapes (from another tool): the API serves non-ASCII as is
            content = json.dumps(self.content, ensure_ascii=False).encode()
        return self.summary_json[:-1] + b',"content":' + content + b"}"


def summary_json(mac: str, content: Document) -> bytes:
    """The list item of a document, rendered once per version of its file."""
    name, entity, ota = summary_fields(content)
    summary = {
        "mac_address": mac,
        "device_name": name,
        "device_entity_id": entity,
        "enable_ota": ota,
    }
    return json.dumps(summary, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Precondition:
    """What a write requires of the current document (from allow_overwrite and If-* headers)."""

    overwrite: bool = True
    if_match: ETags = field(default_factory=ETags)
    if_none_match: ETags = field(default_factory=ETags)

    @property
    def create_only(self) -> bool:
        return not self.overwrite or self.if_none_match.star_tag


class Signature(NamedTuple):
    """What identifies one version of a file without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Signature":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
