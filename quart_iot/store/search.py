"""Fleet search, the part every store shares: what a search asks for, a device's entry in its
answer, and the cache of answers that each store keeps up to date (docs/PERFORMANCE.md, "Fleet
search: a cache per filter").

A `Selection` is one search's answer as of a version of the store (the directory index's
generation, the database's last change id). A store serves it while the version is current,
and otherwise brings it up to date by evaluating only the devices that changed since; the
`SearchCache` keeps the answers of the searches asked most recently, bounded in number and in
bytes, so that a client inventing filters cannot grow memory.
"""

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from quart_iot.documents import Document, InvalidJson, parse_document
from quart_iot.rql import Fields, Filter
from quart_iot.store.records import compact_json, summary_json

MAX_SEARCHES = 64  # answers kept per process, least recently asked first out
MAX_BYTES = 32 * 1024 * 1024  # what they may hold together (one larger answer is kept alone)
ENTRY_BYTES = 150  # what a device in an answer costs beside its entry: dict slot, key, object

SearchKey = tuple[str | None, str | None]


@dataclass(frozen=True, slots=True)
class Search:
    """What a filtered list asks for: a filter (None: every device) and the fields to add to
    each entry (None: none)."""

    filter: Filter | None
    fields: Fields | None

    @classmethod
    def of(cls, filter_text: str | None, fields_text: str | None) -> "Search | None":
        """The search a list's query asks for (InvalidFilter, InvalidFields), None for none."""
        if filter_text is None and fields_text is None:
            return None
        return cls(
            Filter(filter_text) if filter_text is not None else None,
            Fields(fields_text) if fields_text is not None else None,
        )

    @property
    def key(self) -> SearchKey:
        """What the cache knows it by: the texts as asked (two spellings, two entries)."""
        return (
            self.filter.text if self.filter is not None else None,
            self.fields.text if self.fields is not None else None,
        )

    def selects(self, mac: str, content: Document) -> bool:
        """Whether the filter selects the device."""
        return self.filter is None or self.filter.matches(mac, content)

    def entry(self, mac: str, content: Document, summary: bytes) -> bytes:
        """The device's entry in the answer: its list item, with `fields` when asked for."""
        if self.fields is None:
            return summary
        return summary[:-1] + b',"fields":' + compact_json(self.fields.of(mac, content)) + b"}"

    def entry_of(self, mac: str, raw: bytes, summary: bytes | None = None) -> bytes | None:
        """The entry of a device from its stored bytes and list item (computed when None);
        None when the filter does not select it, or when it is not a usable document (which
        the list skips too)."""
        try:
            content = parse_document(raw)
        except InvalidJson:
            return None
        if not self.selects(mac, content):
            return None
        return self.entry(mac, content, summary or summary_json(mac, content))


class Selection:
    """One search's answer as of `version` of the store: each selected device's entry by MAC,
    and the response body, rendered once."""

    __slots__ = ("body", "items", "size", "version")

    def __init__(self, version: int, items: dict[str, bytes], body: bytes | None = None) -> None:
        self.version = version
        self.items = items
        self.body = body if body is not None else render(items)
        self.size = 2 * len(self.body) + ENTRY_BYTES * len(items)  # the entries, and the body

    def updated(self, version: int, changed: Iterable[tuple[str, bytes | None]]) -> "Selection":
        """The answer after the changed devices' new entries (None: not selected now)."""
        items = self.items
        for mac, entry in changed:
            if items.get(mac) == entry:
                continue
            if items is self.items:  # copied once, at the first difference
                items = dict(items)
            if entry is None:
                del items[mac]
            else:
                items[mac] = entry
        return Selection(version, items, self.body if items is self.items else None)


def render(items: dict[str, bytes]) -> bytes:
    """The body, as the unfiltered list's: `{"configs":[...],"count":n}`, sorted by MAC."""
    parts = [items[mac] for mac in sorted(items)]
    return b'{"configs":[' + b",".join(parts) + b'],"count":%d}' % len(parts)


class SearchCache:
    """The answers of the searches asked most recently (thread-safe: the directory store
    updates them from worker threads)."""

    def __init__(self, max_searches: int = MAX_SEARCHES, max_bytes: int = MAX_BYTES) -> None:
        self.max_searches = max_searches
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[SearchKey, Selection] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def size(self) -> int:
        """The bytes the kept answers hold (as `Selection.size` estimates them)."""
        return self._bytes

    def get(self, key: SearchKey) -> Selection | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def keep(self, key: SearchKey, selection: Selection) -> Selection:
        """Keep `selection` unless a newer answer to the search is kept already; the newer."""
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._bytes -= old.size
                if old.version > selection.version:
                    selection = old
            self._kept[key] = selection
            self._bytes += selection.size
            while len(self._kept) > 1 and (
                len(self._kept) > self.max_searches or self._bytes > self.max_bytes
            ):
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= dropped.size
        return selection
