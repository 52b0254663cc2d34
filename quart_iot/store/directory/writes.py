"""The write path: a document saved or deleted atomically and durably, its condition decided
under the write lock, the index told what became visible and when."""

import contextlib
import logging
import os
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

from quart_iot.documents import Document, etag_of
from quart_iot.errors import ConfigExists, ConfigNotFound, ConfigUnreadable, PreconditionFailed
from quart_iot.store.backend import Deleted, Saved, Unconfirmed, WriteMeta
from quart_iot.store.directory.files import Directory, Signature, Unusable
from quart_iot.store.directory.history import History
from quart_iot.store.directory.index import Entry, Index
from quart_iot.store.directory.lock import WriteLock
from quart_iot.store.directory.outage import Outage, storage_errors
from quart_iot.store.records import Precondition, StoredConfig, to_store

log = logging.getLogger(__name__)

# What a write's commit reports: the ETag before it (None: no document; "": one that is not
# usable), when its change became visible (monotonic ns; None: a save of the bytes there
# already, which changes nothing), the history version it made.
Committed = tuple[str | None, int | None, str | None]


class Writer:
    """Saves and deletes (blocking; run in the store's write threads)."""

    def __init__(
        self,
        directory: Directory,
        lock: WriteLock,
        index: Index,
        history: History,
        require_model: Callable[[str, str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.lock = lock
        self.index = index
        self.history = history
        # Decides, under the lock, that a model version a save was validated against is still
        # current (ModelChanged, UnknownModel): ModelFiles.require.
        self.require_model = require_model
        self.outage = Outage("writes")
        self.sync_fault: str | None = None  # a directory fsync failed after a change

    def save(
        self,
        mac: str,
        content: Document,
        precondition: Precondition,
        deadline: float,
        by: WriteMeta | None = None,
    ) -> Saved:
        document = to_store(mac, content, self.directory.max_bytes)  # before any disk I/O
        with storage_errors(f"write of {mac}.json", self.outage):
            temp, fd = self.directory.write_temp(f"{mac}.json", document.raw)
            try:
                check = partial(self._check, mac, precondition)
                commit = partial(self._commit_save, document, precondition, temp, fd, by)
                before, placed_at, version = self.lock.exclusively(deadline, check, commit)
                signature = Signature.of(os.fstat(fd))
            finally:
                os.close(fd)
                self.directory.discard_temp(temp)
        if placed_at is None:  # the very bytes it held: nothing new, no change to tell
            saved = Saved(document, before, None, unchanged=True)
        else:
            saved = Saved(document, before or None, version)
            entry = Entry.of(document, signature, placed_at, True)
            self.index.remember(f"{mac}.json", entry, written=True)
        self._sync(Unconfirmed(saved), mac)  # unchanged too: it may retry an unconfirmed save
        return saved

    def delete(
        self, mac: str, precondition: Precondition, deadline: float, by: WriteMeta | None = None
    ) -> Deleted:
        name = f"{mac}.json"
        with storage_errors(f"delete of {name}", self.outage):
            check = partial(self._check, mac, precondition)
            commit = partial(self._commit_delete, mac, by)
            before, removed_at, version = self.lock.exclusively(deadline, check, commit)
        self.index.forget(name, removed_at)
        deleted = Deleted(mac, before or None, version)
        self._sync(Unconfirmed(deleted), mac)  # the shelf too: the version's name
        return deleted

    def sync_recovers(self) -> bool:
        """Whether a directory fsync works again (it failed after a change)."""
        try:
            self.directory.fsync()
        except OSError:
            return False
        self.sync_fault = None
        return True

    def _commit_save(
        self,
        document: StoredConfig,
        precondition: Precondition,
        temp: Path,
        fd: int,
        by: WriteMeta | None,
        before: str | None,
    ) -> Committed:
        """Rename (or link) the temp file in place, keeping the versions it replaces; nothing
        when the document holds these very bytes already."""
        mac = document.mac
        if before == document.etag and not precondition.create_only:
            return before, None, None
        if not self.history.enabled:
            return before, self._place(temp, f"{mac}.json", precondition), None
        with self.history.shelf(mac) as shelf:
            existed = self.history.keep_current(shelf, mac)  # before the rename replaces it
            placed_at = self._place(temp, f"{mac}.json", precondition)
            try:
                change = "updated" if existed else "created"
                kept = self.history.record(shelf, mac, change, fd, by)
            except OSError as error:  # visible already; the next write keeps it (keep_current)
                log.warning("version of %s.json not kept in its history: %s", mac, error)
                kept = None
        return before, placed_at, kept

    def _place(self, temp: Path, name: str, precondition: Precondition) -> int:
        try:
            return self.directory.put_in_place(temp, name, precondition.create_only)
        except FileExistsError:
            if precondition.if_none_match.star_tag:
                raise PreconditionFailed(name[:-5], "If-None-Match") from None
            raise ConfigExists(name[:-5]) from None
        except IsADirectoryError:
            raise ConfigUnreadable(
                name[:-5], "is a directory, which a PUT never replaces"
            ) from None

    def _commit_delete(
        self, mac: str, by: WriteMeta | None, before: str | None
    ) -> tuple[str | None, int, str | None]:
        """Unlink the document; with history, its `deleted` version only once it is gone."""
        if not (self.history.enabled and self._is_file(mac)):
            return before, self._unlink(mac), None
        with self.history.shelf(mac) as shelf:
            held = self.history.hold_deleted(shelf, mac, by)
            try:
                removed_at = self._unlink(mac)
            except BaseException:
                with contextlib.suppress(OSError):  # else the next write or sweep drops it
                    shelf.drop(held)  # nothing was deleted: no `deleted` version
                raise
            self.history.release_deleted(shelf, mac, held)
        return before, removed_at, held

    def _unlink(self, mac: str) -> int:
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

    def _check(self, mac: str, precondition: Precondition) -> str | None:
        """The current ETag (None: no document; "": one that is not usable), which the write's
        conditions are decided against."""
        current = self._etag_under_lock(f"{mac}.json")
        if_match, if_none_match = precondition.if_match, precondition.if_none_match
        if if_match and not (current and (if_match.star_tag or if_match.contains(current))):
            raise PreconditionFailed(mac, "If-Match")
        if if_none_match and current and if_none_match.contains_weak(current):
            raise PreconditionFailed(mac, "If-None-Match")
        if precondition.model is not None and self.require_model is not None:
            self.require_model(*precondition.model)
        return current

    def _etag_under_lock(self, name: str) -> str | None:
        # The index's when a stat proves it current; else the bytes' (read, never parsed).
        try:
            return self.index.cached_etag(name) or etag_of(self.directory.read(name)[1])
        except FileNotFoundError:
            return None
        except Unusable:
            return ""

    def _sync(self, unconfirmed: Unconfirmed, history_of: str | None = None) -> None:
        """fsync the directory after a change that is already visible (the rename or unlink),
        and first the history directory that the write named its new version in."""
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
