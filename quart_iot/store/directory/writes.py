"""The write path: a document saved or deleted atomically and durably, its condition decided
under the write lock, the index told what became visible and when."""

import logging
import os
import stat
from functools import partial
from pathlib import Path

from quart_iot.documents import Document, dump_document, etag_of
from quart_iot.errors import (
    ConfigExists,
    ConfigNotFound,
    ConfigUnreadable,
    DocumentTooLarge,
    PreconditionFailed,
    WriteNotConfirmed,
)
from quart_iot.store.directory.files import Directory, Unusable
from quart_iot.store.directory.history import History
from quart_iot.store.directory.index import Entry, Index
from quart_iot.store.directory.lock import WriteLock
from quart_iot.store.directory.outage import Outage, storage_errors
from quart_iot.store.records import Precondition, Signature, StoredConfig, summary_json

log = logging.getLogger(__name__)


class SaveNotConfirmed(WriteNotConfirmed):
    """A save that is visible (so it is notified) but whose directory fsync failed."""

    def __init__(self, stored: StoredConfig) -> None:
        super().__init__(stored.mac, "saved", stored.etag)
        self.stored = stored


class Writer:
    """Saves and deletes (blocking; run in the store's write threads)."""

    def __init__(
        self, directory: Directory, lock: WriteLock, index: Index, history: History
    ) -> None:
        self.directory = directory
        self.lock = lock
        self.index = index
        self.history = history
        self.outage = Outage("writes")
        self.sync_fault: str | None = None  # a directory fsync failed after a change

    def save(
        self,
        mac: str,
        content: Document,
        precondition: Precondition,
        deadline: float,
        by: str | None = None,
    ) -> StoredConfig:
        data = dump_document(content)
        if len(data) > self.directory.max_bytes:  # known before any disk I/O
            raise DocumentTooLarge(len(data), self.directory.max_bytes)
        name = f"{mac}.json"
        document = StoredConfig(mac, data, summary_json(mac, content), etag_of(data))
        with storage_errors(f"write of {name}", self.outage):
            temp, fd = self.directory.write_temp(name, data)
            try:
                check = partial(self._check, mac, precondition)
                install = partial(self._install, temp, mac, precondition, fd, by)
                installed_at = self.lock.exclusively(deadline, check, install)
                signature = Signature.of(os.fstat(fd))
            finally:
                os.close(fd)
                self.directory.discard_temp(temp)
        self.index.remember(name, Entry.of(document, signature, installed_at, True), written=True)
        self._sync(SaveNotConfirmed(document), mac)
        return document

    def delete(
        self, mac: str, precondition: Precondition, deadline: float, by: str | None = None
    ) -> None:
        name = f"{mac}.json"
        with storage_errors(f"delete of {name}", self.outage):
            check = partial(self._check, mac, precondition)
            removed_at = self.lock.exclusively(deadline, check, partial(self._unlink, mac, by))
        self.index.forget(name, removed_at)
        self._sync(WriteNotConfirmed(mac, "deleted", None))

    def sync_recovers(self) -> bool:
        """Whether a directory fsync works again (it failed after a change)."""
        try:
            self.directory.fsync()
        except OSError:
            return False
        self.sync_fault = None
        return True

    def _install(
        self, temp: Path, mac: str, precondition: Precondition, fd: int, by: str | None
    ) -> int:
        """Rename (or link) the temp file in place, keeping the versions it replaces."""
        if not self.history.enabled:
            return self._place(temp, f"{mac}.json", precondition)
        with self.history.shelf(mac) as shelf:
            existed = self.history.keep_current(shelf, mac)  # before the rename replaces it
            installed_at = self._place(temp, f"{mac}.json", precondition)
            try:
                self.history.record(shelf, mac, "updated" if existed else "created", fd, by)
            except OSError as error:  # visible already; the next write keeps it (keep_current)
                log.warning("version of %s.json not kept in its history: %s", mac, error)
        return installed_at

    def _place(self, temp: Path, name: str, precondition: Precondition) -> int:
        try:
            return self.directory.install(temp, name, precondition.create_only)
        except FileExistsError:
            if precondition.if_none_match.star_tag:
                raise PreconditionFailed(name[:-5], "If-None-Match") from None
            raise ConfigExists(name[:-5]) from None
        except IsADirectoryError:
            raise ConfigUnreadable(
                name[:-5], "is a directory, which a PUT never replaces"
            ) from None

    def _unlink(self, mac: str, by: str | None) -> int:
        if self.history.enabled and self._is_file(mac):
            with self.history.shelf(mac) as shelf:
                self.history.record(shelf, mac, "deleted", by=by)  # durably, before the unlink
        try:
            return self.directory.unlink(f"{mac}.json")
        except FileNotFoundError:
            raise ConfigNotFound(mac) from None
        except IsADirectoryError:
            raise ConfigUnreadable(mac, "is a directory, which a DELETE never removes") from None

    def _is_file(self, mac: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.directory / f"{mac}.json").st_mode)
        except FileNotFoundError:
            raise ConfigNotFound(mac) from None

    def _check(self, mac: str, precondition: Precondition) -> None:
        if_match, if_none_match = precondition.if_match, precondition.if_none_match
        if not if_match and not if_none_match:
            return
        current = self._etag_under_lock(f"{mac}.json")
        if if_match and not (current and (if_match.star_tag or if_match.contains(current))):
            raise PreconditionFailed(mac, "If-Match")
        if if_none_match and current and if_none_match.contains_weak(current):
            raise PreconditionFailed(mac, "If-None-Match")

    def _etag_under_lock(self, name: str) -> str | None:
        try:
            return etag_of(self.directory.read(name)[1])
        except FileNotFoundError:
            return None
        except Unusable:
            return ""  # present, but has no ETag a client could hold

    def _sync(self, unconfirmed: WriteNotConfirmed, history_of: str | None = None) -> None:
        """fsync the directory after a change that is already visible (the rename or unlink),
        and first the history directory that the save linked its new version into."""
        try:
            if history_of is not None and self.history.enabled:
                # Outside the lock: under it, this fsync serialised every PUT (PERFORMANCE.md).
                # The version this save replaced was linked (and synced) by an earlier write.
                self.history.sync(history_of)
            self.directory.fsync()
        except OSError as error:
            self.sync_fault = "the configs directory could not be synced to disk"
            self.outage.failed(self.sync_fault, f"fsync of the directory: {error}")
            raise unconfirmed from None
        self.sync_fault = None
        self.outage.recovered()
