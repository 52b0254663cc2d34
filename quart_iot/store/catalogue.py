"""Version history, the read side: a device's versions, one version, the deleted devices."""

import contextlib
import json
import os
import time
from typing import Any

from quart_iot.errors import ConfigNotFound, ConfigUnreadable, VersionNotFound
from quart_iot.store.index import RACY_NS
from quart_iot.store.records import Signature, StoredConfig
from quart_iot.store.versions import Shelf, Shelves, Version, stored_version

CACHE_SIZE = 100_000


class Catalogue:
    """Lists and reads kept versions (blocking; in worker threads), with caches that a
    version's file signature or a shelf's directory signature invalidate."""

    def __init__(self, shelves: Shelves) -> None:
        self.shelves = shelves
        self.directory = shelves.directory
        self._items: dict[tuple[str, str], tuple[Signature, dict[str, Any]]] = {}
        self._listings: dict[str, tuple[tuple[Signature, Signature | None], bytes]] = {}

    def listing(self, mac: str) -> bytes:
        """The history body of one device, versions newest first (ConfigNotFound if it never
        had a document)."""
        try:
            with self.shelves.opened(mac) as shelf:
                return self._listing(shelf, mac)
        except (FileNotFoundError, NotADirectoryError):
            if not self.shelves.live(mac):
                raise ConfigNotFound(mac) from None
            return _body(mac, [])  # a document from before history: kept when a write replaces it

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
            item = self._describe(shelf, mac, last)
        deleted_at = last.saved_at if last.change == "deleted" else None
        return [{**item, "deleted_at": deleted_at}]

    def _listing(self, shelf: Shelf, mac: str) -> bytes:
        """From the cache while neither the shelf nor the current file changed."""
        key = self._listing_key(shelf, mac)
        hit = self._listings.get(mac)
        if hit is not None and key is not None and hit[0] == key:
            return hit[1]
        body = _body(mac, [self._describe(shelf, mac, v) for v in reversed(shelf.versions)])
        if key is not None:
            if len(self._listings) >= CACHE_SIZE // 10:
                self._listings.clear()
            self._listings[mac] = (key, body)
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

    def _describe(self, shelf: Shelf, mac: str, version: Version) -> dict[str, Any]:
        """The listing item of a version (cached by its file's signature)."""
        signature = Signature.of(shelf.stat(version))
        key = (mac, version.name)
        hit = self._items.get(key)
        if hit is not None and hit[0] == signature:
            return hit[1]
        signature, data = shelf.read(version, self.directory.max_bytes, mac)
        stored = stored_version(mac, data)
        item = {
            **json.loads(stored.summary_json),
            "version": version.id,
            "etag": stored.etag,
            "saved_at": version.saved_at,
            "size": len(data),
            "change": version.change,
            "subject": shelf.subject(version),
        }
        if len(self._items) >= CACHE_SIZE:
            self._items.clear()
        self._items[key] = (signature, item)
        return item


def _body(mac: str, versions: list[dict[str, Any]]) -> bytes:
    body = {"mac_address": mac, "versions": versions, "count": len(versions)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
