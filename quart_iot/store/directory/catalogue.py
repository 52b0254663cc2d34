"""Version history, the read side: a device's versions, one version, the deleted devices."""

import bisect
import contextlib
import json
import os
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from quart_iot.errors import ConfigNotFound, ConfigUnreadable, VersionNotFound
from quart_iot.store.directory.files import Signature
from quart_iot.store.directory.index import RACY_NS
from quart_iot.store.directory.versions import Shelf, Shelves, Version, stored_version
from quart_iot.store.records import StoredConfig, history_page, version_item

# What each of the two caches (the versions' items, the rendered listings) may hold: a reader
# walking every device's history keeps the most recent, not all it saw (about 30,000
# versions' items, 500 listings of 50 versions).
CACHE_BYTES = 8 * 1024 * 1024
ENTRY_BYTES = 200  # what an entry costs beside its bytes: key, signature, links

Page = tuple[str, int, str | None]  # (mac, limit, before): one page of one device's history
K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Least recently used first out, bounded by the bytes of its values."""

    def __init__(self) -> None:
        self._entries: OrderedDict[K, tuple[V, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, key: K, valid: V | None) -> bytes | None:
        """The value kept for `key` while it was made from `valid` (a signature)."""
        hit = self._entries.get(key)
        if hit is None or valid is None or hit[0] != valid:
            return None
        self._entries.move_to_end(key)
        return hit[1]

    def put(self, key: K, made_from: V, value: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1]) + ENTRY_BYTES
        self._entries[key] = (made_from, value)
        self._bytes += len(value) + ENTRY_BYTES
        while self._bytes > CACHE_BYTES and len(self._entries) > 1:
            _, (_, gone) = self._entries.popitem(last=False)
            self._bytes -= len(gone) + ENTRY_BYTES


class Catalogue:
    """Lists and reads kept versions (blocking; in worker threads), with caches that a
    version's file signature or a shelf's directory signature invalidate."""

    def __init__(self, shelves: Shelves) -> None:
        self.shelves = shelves
        self.directory = shelves.directory
        self._items: BoundedCache[tuple[str, str], Signature] = BoundedCache()
        self._pages: BoundedCache[Page, tuple[Signature, Signature | None]] = BoundedCache()

    def listing(self, mac: str, limit: int = 50, before: str | None = None) -> bytes:
        """A page of one device's history: `limit` versions older than version `before`,
        newest first (ConfigNotFound if it never had a document)."""
        try:
            with self.shelves.opened(mac) as shelf:
                return self._listing(shelf, (mac, limit, before))
        except (FileNotFoundError, NotADirectoryError):
            if not self.shelves.live(mac):
                raise ConfigNotFound(mac) from None
            # A document from before history: kept when a write replaces it.
            return history_page(mac, [], None)

    def read(self, mac: str, version_id: str) -> tuple[Version, StoredConfig]:
        """One version as a stored document."""
        try:
            with self.shelves.opened(mac) as shelf:
                version = shelf.find(mac, version_id)
                _, data = shelf.read(version, self.directory.max_bytes, mac)
        except (FileNotFoundError, NotADirectoryError):
            raise VersionNotFound(mac, version_id) from None
        return version, stored_version(mac, data)

    def deleted(self) -> list[dict[str, Any]]:
        """Devices whose document is gone but whose history remains, by MAC."""
        found = []
        for mac in self.shelves.macs():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, ConfigUnreadable):
                found.extend(self._deleted_one(mac))
        return found

    def _deleted_one(self, mac: str) -> list[dict[str, Any]]:
        if self.shelves.live(mac):
            return []
        with self.shelves.opened(mac) as shelf:
            last = shelf.newest()
            if last is None:
                return []
            item = json.loads(self._describe(shelf, mac, last))
        deleted_at = last.saved_at if last.change == "deleted" else None
        return [{**item, "deleted_at": deleted_at}]

    def _listing(self, shelf: Shelf, page: Page) -> bytes:
        """From the cache while neither the shelf nor the current file changed."""
        mac, limit, before = page
        key = self._listing_key(shelf, mac)
        body = self._pages.get(page, key)
        if body is None:
            versions, older = _page(shelf.versions, limit, before)
            body = history_page(mac, [self._describe(shelf, mac, v) for v in versions], older)
            if key is not None:
                self._pages.put(page, key, body)
        return body

    def _listing_key(self, shelf: Shelf, mac: str) -> tuple[Signature, Signature | None] | None:
        """What identifies the listing; None while a change could hide in a timestamp tick.

        The shelf changes with every version linked or removed; the current file is the one
        version a (careless) in-place edit could change.
        """
        now = time.time_ns()
        directory = Signature.of(os.fstat(shelf.fd))
        current = shelf.current(mac)
        signature = Signature.of(current) if current is not None else None
        newest = max(directory.mtime_ns, signature.ctime_ns if signature else 0)
        return None if now - newest < RACY_NS else (directory, signature)

    def _describe(self, shelf: Shelf, mac: str, version: Version) -> bytes:
        """The listing item of a version, as JSON (cached by its file's signature)."""
        key = (mac, version.name)
        item = self._items.get(key, Signature.of(shelf.stat(version)))
        if item is not None:
            return item
        signature, data = shelf.read(version, self.directory.max_bytes, mac)
        stored = stored_version(mac, data)
        about = {
            "version": version.id,
            "etag": stored.etag,
            "saved_at": version.saved_at,
            "size": len(data),
            "change": version.change,
            "subject": shelf.subject(version),
            "changeId": shelf.change_id(version),
        }
        item = version_item(stored, about)
        self._items.put(key, signature, item)
        return item


def _page(
    versions: list[Version], limit: int, before: str | None
) -> tuple[list[Version], str | None]:
    """`limit` of the versions (oldest first) older than id `before`, newest first, and the
    cursor of the next page (None: this is the last)."""
    end = bisect.bisect_left([v.id for v in versions], before) if before else len(versions)
    start = max(0, end - limit)
    page = versions[start:end][::-1]
    return page, page[-1].id if start and page else None
